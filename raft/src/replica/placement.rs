//! A leader on slow links hands leadership to a voter that commits faster.
//!
//! Every write waits for the leader to reach a majority, so a leader whose links are slow (a
//! node in a far region, a congested or failing NIC) makes every write slow even when the
//! other voters are close to each other: with 200 ms each way on the leader's links the
//! cluster committed about 15 writes a second, where the same cluster with a slow follower
//! committed over 600. Raft itself never moves such a leader: its heartbeats arrive, late.
//!
//! Each node measures its round trip to each peer with the transport's pings (the least of
//! the last few, so that a ping queued behind a busy link does not count) and reports them in
//! its ping answers, so the leader knows every link. A voter's commit round trip is its round
//! trip to the nearest majority of the voters (itself included). The leader hands over
//! (`Replica::move_leadership`) when a voter's commit round trip is both [`MIN_GAIN`] shorter
//! and [`MIN_RATIO`] times shorter than its own, for [`SUSTAINED`] checks in a row, and not
//! again within [`COOLDOWN`]. Evenly spread nodes (every link 100 ms) never move leadership;
//! a busy leader on loopback (round trips of a few milliseconds) never does either.
//!
//! A follower for which such a voter exists does not stand for election. Over its slow links
//! the leader's heartbeats reach it late now and then, and its campaigns (which bump the term)
//! unseated the well-placed leader again and again: three elections in six seconds after a
//! move. It stands again as soon as no voter is much better placed, which is also the case
//! when the better-placed voters stop answering pings, so a majority can always elect.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Replica;
use crate::metrics;
use crate::transport::link;

/// How often the leader looks at its links.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Checks in a row a better-placed voter must win before leadership moves to it.
const SUSTAINED: u32 = 3;
/// The least time a move must save on every commit.
const MIN_GAIN: Duration = Duration::from_millis(50);
/// And the least factor.
const MIN_RATIO: u32 = 3;
/// A leader that moved (or tried to) waits this long before it tries again.
const COOLDOWN: Duration = Duration::from_secs(60);

/// How long `voter`, leading, would wait for a majority of `voters` to have an entry: the
/// round trip to the nearest other voters that make a majority with it. `None` when fewer of
/// its links are known.
fn commit_rtt(
    voter: u64,
    voters: &[u64],
    rtts: &BTreeMap<(u64, u64), Duration>,
) -> Option<Duration> {
    let needed = voters.len() / 2; // other voters that make a majority with `voter`
    if needed == 0 {
        return Some(Duration::ZERO);
    }
    let mut links: Vec<Duration> = voters
        .iter()
        .filter(|&&v| v != voter)
        .filter_map(|&v| rtts.get(&link(voter, v)).copied())
        .collect();
    links.sort();
    links.get(needed - 1).copied()
}

/// The voter leadership should move to from `leader`, if one commits much faster.
pub(crate) fn better_leader(
    leader: u64,
    voters: &[u64],
    rtts: &BTreeMap<(u64, u64), Duration>,
) -> Option<u64> {
    let own = commit_rtt(leader, voters, rtts)?;
    let (best, rtt) = voters
        .iter()
        .filter(|&&v| v != leader)
        .filter_map(|&v| Some((v, commit_rtt(v, voters, rtts)?)))
        .min_by_key(|&(v, rtt)| (rtt, v))?;
    (own >= rtt + MIN_GAIN && own >= rtt * MIN_RATIO).then_some(best)
}

impl Replica {
    /// A voter that would commit much faster than this node as leader, and whether this node
    /// leads.
    fn better_placed(&self) -> (Option<u64>, bool) {
        let m = self.inner.raft.metrics().borrow().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let better = voters
            .contains(&self.inner.id)
            .then(|| better_leader(self.inner.id, &voters, &self.inner.transport.rtt_table()))
            .flatten();
        (better, m.current_leader == Some(self.inner.id))
    }

    /// The voter leadership should move to, if this node leads and another commits much faster.
    pub(crate) fn better_placed_voter(&self) -> Option<u64> {
        match self.better_placed() {
            (better, true) => better,
            (_, false) => None,
        }
    }

    /// While this node leads, moves leadership to a better-placed voter; while it follows and
    /// such a voter is there, does not campaign (module docs). Runs until Raft stops or the
    /// node begins stopping.
    pub(crate) async fn keep_leadership_well_placed(self) {
        // Only to notice that Raft stopped.
        let watch = self.inner.raft.metrics();
        let (mut streak, mut last_move): (u32, Option<Instant>) = (0, None);
        let mut campaigning = true;
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.stopping() || watch.has_changed().is_err() {
                return;
            }
            let (better, leading) = self.better_placed();
            // Over its slow links this node's heartbeats from the leader come late now and
            // then; were it to campaign, its higher term would unseat a well-placed leader for
            // nothing (it cannot win against longer logs, or should not).
            let campaign = leading || better.is_none();
            // Not while a handover (a stop's, say) has campaigns turned off.
            let no_handover = self.inner.handover.try_lock();
            if campaign != campaigning && no_handover.is_ok() {
                campaigning = campaign;
                self.inner.raft.runtime_config().elect(campaign);
                if campaign {
                    tracing::info!("this node stands for election again");
                } else {
                    tracing::info!(
                        "another voter is much nearer a majority; this node no longer stands for election"
                    );
                }
            }
            drop(no_handover);
            let better = better.filter(|_| leading);
            streak = if better.is_some() { streak + 1 } else { 0 };
            let cooled = last_move.is_none_or(|t| t.elapsed() >= COOLDOWN);
            let Some(to) = better.filter(|_| streak >= SUSTAINED && cooled) else {
                continue;
            };
            let rtts = self.inner.transport.rtt_table();
            tracing::info!(
                to,
                ?rtts,
                "this leader's links are slow; handing leadership over"
            );
            last_move = Some(Instant::now());
            streak = 0;
            if self.move_leadership(to).await.is_some() {
                metrics::leadership_moved();
                // It follows now, on slow links: `move_leadership` left campaigns off.
                campaigning = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn table(links: &[(u64, u64, u64)]) -> BTreeMap<(u64, u64), Duration> {
        links
            .iter()
            .map(|&(a, b, ms)| (link(a, b), MS * ms as u32))
            .collect()
    }

    #[test]
    fn a_leader_with_slow_links_gives_way_to_the_voter_nearest_a_majority() {
        // 200 ms each way on every link of node 1; nodes 2 and 3 are close.
        let rtts = table(&[(1, 2, 400), (1, 3, 401), (2, 3, 1)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &rtts), Some(2));
        // From either fast node, nothing moves: node 1 is not better placed.
        assert_eq!(better_leader(2, &[1, 2, 3], &rtts), None);
        assert_eq!(better_leader(3, &[1, 2, 3], &rtts), None);
    }

    #[test]
    fn a_slow_follower_or_evenly_slow_links_move_nothing() {
        // Node 3 is slow; leader 1 commits with node 2.
        let slow_follower = table(&[(1, 2, 1), (1, 3, 400), (2, 3, 400)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &slow_follower), None);
        // Every link 200 ms: nobody commits faster.
        let even = table(&[(1, 2, 200), (1, 3, 210), (2, 3, 190)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &even), None);
        // A busy leader on loopback: 12 ms against 1 ms is a ratio but no real gain.
        let busy = table(&[(1, 2, 12), (1, 3, 14), (2, 3, 1)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &busy), None);
    }

    #[test]
    fn a_majority_of_five_needs_the_second_nearest_link() {
        // Leader 1 has one near voter (2) but needs two acknowledgements: its second-nearest
        // link is 300 ms. Voter 3 has two near voters (4 and 5).
        let rtts = table(&[
            (1, 2, 1),
            (1, 3, 300),
            (1, 4, 300),
            (1, 5, 300),
            (2, 3, 300),
            (2, 4, 300),
            (2, 5, 300),
            (3, 4, 2),
            (3, 5, 2),
            (4, 5, 2),
        ]);
        assert_eq!(better_leader(1, &[1, 2, 3, 4, 5], &rtts), Some(3));
    }

    #[test]
    fn unknown_links_make_no_move() {
        // Nothing known of the leader's own links: no figure to compare.
        let rtts = table(&[(2, 3, 1)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &rtts), None);
        // A voter none of whose links is known is not a candidate.
        let rtts = table(&[(1, 2, 400)]);
        assert_eq!(better_leader(1, &[1, 2, 3], &rtts), None);
        // A lone voter has nowhere to go.
        assert_eq!(better_leader(1, &[1], &BTreeMap::new()), None);
    }
}
