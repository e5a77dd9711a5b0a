//! Nemesis kinds and the fault schedule, generated up front from the seed so a run can be
//! replayed: the same seed, node count, duration and nemesis list give the same schedule
//! (which node is "the leader" is of course only known when the fault starts).

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// Split the nodes into a majority and a minority that cannot talk.
    Partition,
    /// Cut the current leader off from every other node.
    IsolateLeader,
    /// Two halves that cannot talk, plus one node that talks to both.
    Bridge,
    /// One node cannot be connected to by the others (new connections to it are dropped),
    /// while it can still open connections to them.
    OneWay,
    /// kill -9 a random node, restart it when the fault ends.
    Kill,
    /// kill -9 the current leader, restart it when the fault ends.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT when the fault ends.
    Pause,
    /// Every node drops `param` % of the packets from the other nodes.
    Loss,
    /// Every node delays its packets to the other nodes by `param` ms (25–125: round trips up
    /// to 250 ms, inside what the default timeouts are tuned for; `--delay-ms` sets it).
    Delay,
    /// Remove a random node (a follower or the leader) from the membership, kill it and wipe
    /// its disk; when the fault ends, a fresh node joins in its place under a new id (a dead
    /// machine replaced).
    Membership,
    /// Power loss of a random minority: the nodes die and their disks keep only what was
    /// fsynced; restarted when the fault ends.
    PowerLoss,
    /// Power loss of the current leader.
    PowerLossLeader,
    /// Power loss of every node at once: everything acknowledged must still be there.
    PowerLossAll,
    /// One node's links are slow both ways (`param` ms each way, 200 by default): a node in a
    /// far region.
    SlowNode,
    /// The current leader's links are slow both ways (200 ms each way): chorus should move
    /// leadership to a voter that commits faster.
    SlowLeader,
    /// Every node in turn stopped with SIGTERM and started again once the previous one is
    /// ready (an upgrade): the leader hands leadership over, so no gap should be long.
    RollingRestart,
}

pub const ALL: [Nemesis; 16] = [
    Nemesis::Partition,
    Nemesis::IsolateLeader,
    Nemesis::Bridge,
    Nemesis::OneWay,
    Nemesis::Kill,
    Nemesis::KillLeader,
    Nemesis::Pause,
    Nemesis::Loss,
    Nemesis::Delay,
    Nemesis::Membership,
    Nemesis::PowerLoss,
    Nemesis::PowerLossLeader,
    Nemesis::PowerLossAll,
    Nemesis::SlowNode,
    Nemesis::SlowLeader,
    Nemesis::RollingRestart,
];

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Partition => "partition",
            Nemesis::IsolateLeader => "isolate-leader",
            Nemesis::Bridge => "bridge",
            Nemesis::OneWay => "one-way",
            Nemesis::Kill => "kill",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::Pause => "pause",
            Nemesis::Loss => "loss",
            Nemesis::Delay => "delay",
            Nemesis::Membership => "membership",
            Nemesis::PowerLoss => "power-loss",
            Nemesis::PowerLossLeader => "power-loss-leader",
            Nemesis::PowerLossAll => "power-loss-all",
            Nemesis::SlowNode => "slow-node",
            Nemesis::SlowLeader => "slow-leader",
            Nemesis::RollingRestart => "rolling-restart",
        }
    }

    /// Faults that delay packets (the NFQUEUE delayer).
    pub fn delays(self) -> bool {
        matches!(
            self,
            Nemesis::Delay | Nemesis::SlowNode | Nemesis::SlowLeader
        )
    }

    /// Faults after which the time to recover (longest window without an ok op) is reported.
    pub fn disrupts_leader(self) -> bool {
        matches!(
            self,
            Nemesis::IsolateLeader
                | Nemesis::KillLeader
                | Nemesis::Kill
                | Nemesis::Pause
                | Nemesis::PowerLoss
                | Nemesis::PowerLossLeader
        )
    }

    /// Faults that cut the power: the nodes' data directories must sit on the harness's
    /// power-loss file system.
    pub fn loses_power(self) -> bool {
        matches!(
            self,
            Nemesis::PowerLoss | Nemesis::PowerLossLeader | Nemesis::PowerLossAll
        )
    }
}

/// Parse `partition,kill,...`; `all` for every nemesis, `none` for none.
pub fn parse_list(s: &str) -> Result<Vec<Nemesis>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => out.extend(ALL),
            "none" => {}
            _ => match ALL.iter().find(|n| n.name() == part) {
                Some(n) => out.push(*n),
                None => bail!(
                    "unknown nemesis `{part}`; known: all, none, {}",
                    ALL.map(Nemesis::name).join(", ")
                ),
            },
        }
    }
    out.dedup();
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub kind: Nemesis,
    /// Milliseconds since the workload started.
    pub start_ms: u64,
    pub end_ms: u64,
    /// A random permutation of node indices; each nemesis takes its targets from the front
    /// (the first node for kill/pause/one-way, the first n/2 as the minority, ...).
    pub order: Vec<usize>,
    /// Loss percentage or delay milliseconds; unused by the others.
    pub param: u32,
}

/// Faults one at a time: a quiet gap (cluster healthy), then a fault window, until
/// `time_ms - tail_ms`. Deterministic in `seed`.
pub fn generate(
    seed: u64,
    nodes: usize,
    time_ms: u64,
    kinds: &[Nemesis],
    gap_ms: (u64, u64),
    fault_ms: (u64, u64),
) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    // Leave the end of the run fault-free so the heal is observed under load.
    let tail_ms = 3_000.min(time_ms / 4);
    let mut t = 0;
    loop {
        let start = t + rng.random_range(gap_ms.0..=gap_ms.1);
        let end = start + rng.random_range(fault_ms.0..=fault_ms.1);
        if end + tail_ms > time_ms {
            break;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let mut order: Vec<usize> = (0..nodes).collect();
        order.shuffle(&mut rng);
        let param = match kind {
            Nemesis::Loss => rng.random_range(20..=50),
            Nemesis::Delay => rng.random_range(25..=125),
            Nemesis::SlowNode | Nemesis::SlowLeader => 200,
            _ => 0,
        };
        out.push(Fault {
            kind,
            start_ms: start,
            end_ms: end,
            order,
            param,
        });
        t = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_other_seed_differs() {
        let show = |s: u64| {
            serde_json::to_string(&generate(
                s,
                5,
                600_000,
                &ALL,
                (2_000, 8_000),
                (3_000, 15_000),
            ))
            .unwrap_or_default()
        };
        assert_eq!(show(42), show(42));
        assert_ne!(show(42), show(43));
    }

    #[test]
    fn faults_do_not_overlap_and_fit_the_run() {
        let f = generate(7, 3, 120_000, &ALL, (2_000, 6_000), (4_000, 12_000));
        assert!(!f.is_empty());
        for w in f.windows(2) {
            assert!(w[0].end_ms <= w[1].start_ms);
        }
        for x in &f {
            assert!(x.start_ms < x.end_ms && x.end_ms <= 120_000);
            let mut o = x.order.clone();
            o.sort_unstable();
            assert_eq!(o, vec![0, 1, 2]);
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            parse_list("partition, kill-leader").ok(),
            Some(vec![Nemesis::Partition, Nemesis::KillLeader])
        );
        assert_eq!(parse_list("all").map(|v| v.len()).ok(), Some(ALL.len()));
        assert!(parse_list("meteor").is_err());
    }
}
