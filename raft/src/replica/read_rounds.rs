//! Linearizable reads share ReadIndex rounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::ReplicaError;

/// Linearizable reads share ReadIndex rounds: one round (a message to the leader, which confirms
/// its leadership with a heartbeat to a majority) answers every read that arrived before it
/// started. A read waits for the round in flight, if any, to finish, then joins the next one, so
/// under load a node has at most one round in flight and each round serves a whole batch.
pub(super) struct ReadRounds {
    /// Rounds started so far (round n is the n-th to start).
    started: AtomicU64,
    /// Held while a round is in flight: the number and outcome of the last finished round.
    last: tokio::sync::Mutex<(u64, Result<u64, ReplicaError>)>,
}

impl Default for ReadRounds {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            // Round 0 never ran: no read arrives before it, so its outcome is never used.
            last: tokio::sync::Mutex::new((0, Ok(0))),
        }
    }
}

impl ReadRounds {
    /// A read index for a read arriving now: the outcome of the next round to finish that
    /// started after this call, running `ask` (one ReadIndex round) if no such round is under
    /// way when this read's turn comes.
    pub(super) async fn index<F, Fut>(&self, deadline: Instant, ask: F) -> Result<u64, ReplicaError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u64, ReplicaError>>,
    {
        // Any round numbered above this one starts after this read arrived, so its read index
        // covers every write acknowledged before the read.
        let arrived = self.started.load(Ordering::Acquire);
        let mut last = tokio::time::timeout_at(deadline.into(), self.last.lock())
            .await
            .map_err(|_| ReplicaError::NoLeader)?;
        if last.0 > arrived {
            return last.1.clone();
        }
        let round = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let result = ask().await;
        *last = (round, result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A read is never answered by a round that started before it arrived: reads B and C arrive
    /// while round 1 (started for read A) is in flight, so they wait for it, then share round 2,
    /// which only one of them asks for.
    #[tokio::test]
    async fn a_read_is_answered_by_a_round_that_started_after_it_arrived() {
        let rounds = Arc::new(ReadRounds::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let (release_first, first_answer) = tokio::sync::oneshot::channel::<u64>();
        let a = {
            let (rounds, asked) = (rounds.clone(), asked.clone());
            tokio::spawn(async move {
                let ask = || async {
                    asked.fetch_add(1, Ordering::SeqCst);
                    Ok(first_answer.await.unwrap_or(0))
                };
                rounds.index(deadline, ask).await
            })
        };
        let round_one = async {
            while rounds.started.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), round_one)
            .await
            .expect("read a starts round 1");
        let later = |rounds: Arc<ReadRounds>, asked: Arc<AtomicUsize>| {
            tokio::spawn(async move {
                let ask = || async {
                    asked.fetch_add(1, Ordering::SeqCst);
                    Ok(20)
                };
                rounds.index(deadline, ask).await
            })
        };
        let b = later(rounds.clone(), asked.clone());
        let c = later(rounds.clone(), asked.clone());
        // Both have read the round count and wait for round 1's lock.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release_first.send(10).expect("round 1 is waiting");
        let (a, b, c) = (a.await, b.await, c.await);
        assert_eq!(a.expect("read a").expect("index"), 10);
        assert_eq!(
            b.expect("read b").expect("index"),
            20,
            "not round 1's answer"
        );
        assert_eq!(
            c.expect("read c").expect("index"),
            20,
            "not round 1's answer"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2, "b and c shared round 2");
    }

    /// A read that arrives while no round is in flight starts one; an error is every sharer's.
    #[tokio::test]
    async fn a_failed_round_fails_its_reads_and_the_next_read_asks_again() {
        let rounds = ReadRounds::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let failed = rounds
            .index(deadline, || async { Err(ReplicaError::NoLeader) })
            .await;
        assert!(matches!(failed, Err(ReplicaError::NoLeader)));
        let ok = rounds.index(deadline, || async { Ok(7) }).await;
        assert_eq!(ok.expect("index"), 7);
    }
}
