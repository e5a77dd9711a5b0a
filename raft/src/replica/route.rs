//! Routing a request to the leader: which node to ask, when to ask again, and what a failure
//! means for the caller. The mechanics of one attempt (a local call on the leader, a batched
//! or lone forward to another node) are the caller's; this module owns the policy, so it is
//! tested against scripted leaders and answers without a cluster.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ReplicaError;
use crate::protocol::{ForwardError, PeerRequest, PeerResponse};
use crate::transport::TransportError;

/// The nodes a request can be sent to.
pub(crate) trait Nodes {
    /// Carries `req` out once on `leader`, waiting at most about `remaining`.
    async fn attempt(
        &self,
        leader: u64,
        req: &PeerRequest,
        remaining: Duration,
    ) -> Result<PeerResponse, TransportError>;
}

/// The leader this node currently follows, as its Raft metrics say.
pub(crate) trait CurrentLeader {
    fn current_leader(&self) -> Option<u64>;
}

impl CurrentLeader for openraft::metrics::RaftServerMetrics<u64, storage::ChorusNode> {
    fn current_leader(&self) -> Option<u64> {
        self.current_leader
    }
}

/// Runs `req` on the leader until `deadline`: `nodes.attempt(leader, req, remaining)` carries
/// it out once. The same `req` (so the same dedupe key) goes on every attempt, so a write that the
/// first leader applied without answering applies once whichever leader takes the retry.
///
/// - An attempt still waiting on a leader is dropped once `leaders` names another one, and the
///   request goes there (a paused or cut-off leader is replaced sooner than it times out).
/// - `NotLeader`, or no session with the leader, leaves the request's outcome unaffected: it is
///   retried as soon as the leader changes, or after a short pause.
/// - A rejection is final. Any other failure may have reached the leader: if the deadline passes
///   after one, a write is reported in doubt (`Unknown`), anything else as `NoLeader`.
pub(crate) async fn route<L: CurrentLeader, T>(
    nodes: &impl Nodes,
    mut leaders: watch::Receiver<L>,
    req: &PeerRequest,
    deadline: Instant,
    extract: fn(PeerResponse) -> Option<Result<T, ForwardError>>,
) -> Result<T, ReplicaError> {
    // Set when a request may have reached a leader without an answer: the outcome is unknown.
    let mut in_doubt: Option<String> = None;
    loop {
        let leader = leaders.borrow_and_update().current_leader();
        if let Some(leader) = leader {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::select! {
                answer = nodes.attempt(leader, req, remaining) => answer,
                () = leader_moved(leaders.clone(), leader) => Err(TransportError::Unreachable(
                    leader,
                    "it stopped being the leader before answering".into(),
                )),
            };
            match answer.map(extract) {
                Ok(Some(Ok(value))) => return Ok(value),
                Ok(Some(Err(ForwardError::Rejected(m)))) => return Err(ReplicaError::Rejected(m)),
                Ok(Some(Err(ForwardError::NotLeader))) => {}
                Ok(Some(Err(ForwardError::Failed(m)))) => in_doubt = Some(m),
                Ok(None) => {
                    in_doubt = Some(format!("node {leader} answered with the wrong message"))
                }
                Err(TransportError::NotConnected(_)) => {}
                Err(e) => in_doubt = Some(e.to_string()),
            }
        }
        if Instant::now() >= deadline {
            return Err(match in_doubt {
                Some(m) if matches!(req, PeerRequest::ClientWrites(_)) => ReplicaError::Unknown(m),
                _ => ReplicaError::NoLeader,
            });
        }
        // Retry soon, or as soon as the leader changes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let pause = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let _ = tokio::time::timeout(pause, leaders.changed()).await;
    }
}

/// Resolves once `leaders` names a leader other than `leader` (never, if the Raft stops).
async fn leader_moved<L: CurrentLeader>(mut leaders: watch::Receiver<L>, leader: u64) {
    let moved = leaders
        .wait_for(|m| m.current_leader().is_some_and(|now| now != leader))
        .await
        .is_ok();
    if !moved {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use storage::{Command, Request};

    use crate::protocol::WriteReceipt;

    impl CurrentLeader for Option<u64> {
        fn current_leader(&self) -> Option<u64> {
            *self
        }
    }

    /// What a scripted node does with an attempt.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Ok,
        NotLeader,
        Failed,
        Rejected,
        NotConnected,
        TimedOut,
        /// Does not answer (a paused leader) within the time the attempt was given.
        Hangs,
    }

    fn write() -> PeerRequest {
        let request = Request {
            dedupe_key: Some("w:1:abc:7".into()),
            at_ms: 0,
            command: Command::Batch(Vec::new()),
        };
        PeerRequest::ClientWrites(vec![(request, None)])
    }

    fn receipt() -> WriteReceipt {
        WriteReceipt {
            index: 42,
            applied: storage::Applied {
                result: Ok(storage::Outcome::Done),
                deduplicated: false,
            },
            read_back: None,
        }
    }

    fn dedupe_key(req: &PeerRequest) -> Option<String> {
        match req {
            PeerRequest::ClientWrites(w) => w.first().and_then(|(r, _)| r.dedupe_key.clone()),
            _ => None,
        }
    }

    fn reply(
        req: &PeerRequest,
        answer: Answer,
        leader: u64,
    ) -> Result<PeerResponse, TransportError> {
        let forward = |r: Result<(), ForwardError>| match req {
            PeerRequest::ClientWrites(_) => PeerResponse::ClientWrites(vec![r.map(|()| receipt())]),
            _ => PeerResponse::ReadIndex(r.map(|()| 42)),
        };
        Ok(match answer {
            Answer::Ok => forward(Ok(())),
            Answer::NotLeader => forward(Err(ForwardError::NotLeader)),
            Answer::Failed => forward(Err(ForwardError::Failed("disk full".into()))),
            Answer::Rejected => forward(Err(ForwardError::Rejected("no such track".into()))),
            Answer::NotConnected => return Err(TransportError::NotConnected(leader)),
            Answer::TimedOut => {
                return Err(TransportError::Timeout(leader, Duration::from_millis(2500)));
            }
            Answer::Hangs => unreachable!("handled by the caller"),
        })
    }

    fn extract_index(r: PeerResponse) -> Option<Result<u64, ForwardError>> {
        match r {
            PeerResponse::ClientWrites(mut w) if w.len() == 1 => {
                w.pop().map(|r| r.map(|w| w.index))
            }
            PeerResponse::ReadIndex(r) => Some(r),
            _ => None,
        }
    }

    /// Nodes that answer as `script(leader, attempt number)` says; `on_attempt` may move the
    /// leader when an attempt starts. Records every attempt: the leader asked and the dedupe
    /// key of the request it was given.
    struct Script<S, M> {
        script: S,
        on_attempt: M,
        attempts: Mutex<Vec<(u64, Option<String>)>>,
    }

    impl<S: Fn(u64, usize) -> Answer, M: Fn(u64)> Nodes for Script<S, M> {
        async fn attempt(
            &self,
            leader: u64,
            req: &PeerRequest,
            remaining: Duration,
        ) -> Result<PeerResponse, TransportError> {
            let n = {
                let mut log = self.attempts.lock().unwrap();
                log.push((leader, dedupe_key(req)));
                log.len()
            };
            (self.on_attempt)(leader);
            match (self.script)(leader, n) {
                Answer::Hangs => {
                    // As a real attempt does, it gives up when the time it was given is over.
                    tokio::time::sleep(remaining).await;
                    Err(TransportError::Timeout(leader, remaining))
                }
                answer => reply(req, answer, leader),
            }
        }
    }

    /// Routes `req` for `timeout` against a [`Script`]; the result and the attempts made.
    async fn run(
        req: PeerRequest,
        timeout: Duration,
        leaders: watch::Receiver<Option<u64>>,
        script: impl Fn(u64, usize) -> Answer,
        on_attempt: impl Fn(u64),
    ) -> (Result<u64, ReplicaError>, Vec<(u64, Option<String>)>) {
        let nodes = Script {
            script,
            on_attempt,
            attempts: Mutex::default(),
        };
        let deadline = Instant::now() + timeout;
        let result = route(&nodes, leaders, &req, deadline, extract_index).await;
        (result, nodes.attempts.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_follows_the_leader_when_it_moves_and_keeps_its_dedupe_key() {
        // Node 1 leads but never answers (paused); node 2 takes over while the write waits.
        let (tx, rx) = watch::channel(Some(1));
        let (result, attempts) = run(
            write(),
            Duration::from_secs(10),
            rx,
            |leader, _| {
                if leader == 1 {
                    Answer::Hangs
                } else {
                    Answer::Ok
                }
            },
            |leader| {
                if leader == 1 {
                    tx.send_replace(Some(2));
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 42);
        let key = Some("w:1:abc:7".to_string());
        assert_eq!(attempts, vec![(1, key.clone()), (2, key)]);
    }

    #[tokio::test(start_paused = true)]
    async fn not_leader_and_no_session_are_retried_and_then_succeed() {
        let (_tx, rx) = watch::channel(Some(3));
        let (result, attempts) = run(
            write(),
            Duration::from_secs(10),
            rx,
            |_, n| match n {
                1 => Answer::NotLeader,
                2 => Answer::NotConnected,
                _ => Answer::Ok,
            },
            |_| {},
        )
        .await;
        assert_eq!(result.unwrap(), 42);
        assert_eq!(attempts.len(), 3);
        assert!(
            attempts
                .iter()
                .all(|(_, key)| key.as_deref() == Some("w:1:abc:7"))
        );
    }

    /// The outcome at the deadline, for a write and for a read index, after attempts that all
    /// answered the same way.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_reports_in_doubt_only_for_a_write_that_may_have_reached_a_leader() {
        let cases = [
            (write(), Answer::TimedOut, "Unknown"),
            (write(), Answer::Failed, "Unknown"),
            (write(), Answer::Hangs, "Unknown"),
            (write(), Answer::NotLeader, "NoLeader"),
            (write(), Answer::NotConnected, "NoLeader"),
            (PeerRequest::ReadIndex, Answer::TimedOut, "NoLeader"),
            (PeerRequest::ReadIndex, Answer::Failed, "NoLeader"),
            (PeerRequest::ReadIndex, Answer::Hangs, "NoLeader"),
            (write(), Answer::Rejected, "Rejected"),
        ];
        for (req, answer, expected) in cases {
            let (_tx, rx) = watch::channel(Some(1));
            let timeout = Duration::from_secs(3);
            let started = Instant::now();
            let (result, attempts) = run(req, timeout, rx, |_, _| answer, |_| {}).await;
            let error = result.expect_err("no attempt succeeds");
            let kind = format!("{error:?}");
            assert!(kind.starts_with(expected), "{answer:?}: {kind}");
            if matches!(answer, Answer::Rejected) {
                assert_eq!(attempts.len(), 1, "a rejection is final");
            } else {
                assert!(started.elapsed() >= timeout, "{answer:?} gave up early");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_leader_is_in_doubt_only_once_the_attempt_has_timed_out() {
        // The transport gives up on an attempt before the request's deadline (ATTEMPT_TIMEOUT):
        // that failure may have reached the leader, so a write then ends in doubt.
        let (_tx, rx) = watch::channel(Some(1));
        let (result, attempts) = run(
            write(),
            Duration::from_secs(5),
            rx,
            |_, n| {
                if n == 1 {
                    Answer::TimedOut
                } else {
                    Answer::NotConnected
                }
            },
            |_| {},
        )
        .await;
        assert!(
            matches!(result, Err(ReplicaError::Unknown(_))),
            "{result:?}"
        );
        assert!(attempts.len() > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_leader_nothing_is_sent_and_the_leader_is_used_once_elected() {
        let (tx, rx) = watch::channel(None);
        let (_, attempts) = run(
            write(),
            Duration::from_secs(2),
            rx,
            |_, _| Answer::Ok,
            |_| {},
        )
        .await;
        assert!(attempts.is_empty());

        // Elected half-way through the wait: the request goes to it at once.
        let (tx2, rx2) = watch::channel(None);
        let elect = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            tx2.send_replace(Some(2));
            tx2
        });
        let started = Instant::now();
        let (result, attempts) = run(
            write(),
            Duration::from_secs(10),
            rx2,
            |_, _| Answer::Ok,
            |_| {},
        )
        .await;
        assert_eq!(result.unwrap(), 42);
        assert_eq!(attempts.len(), 1);
        assert!(started.elapsed() < Duration::from_millis(800));
        drop((tx, elect.await));
    }
}
