//! The queue-level checkers (set, counter, exactly-once). Pure functions over what the
//! workload recorded, so they are unit-tested without a cluster.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Outcome of one operation, Jepsen's `:ok` / `:fail` / `:info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it happened.
    Ok,
    /// Definitely did not happen (rejected before any effect, or connection refused).
    Fail,
    /// Unknown: sent, but no definite answer (timeout, dropped connection, 503 after forwarding).
    Info,
}

#[derive(Debug, Default, Serialize)]
pub struct SetResult {
    pub valid: bool,
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown_present: usize,
    pub unknown_absent: usize,
    /// Acknowledged adds missing from the final state: lost writes.
    pub lost: Vec<u64>,
    /// Present in the final state but never attempted.
    pub unexpected: Vec<u64>,
    /// Present although the add was definitely rejected.
    pub failed_but_present: Vec<u64>,
}

/// `adds`: every add with its outcome. `final_ids`: everything the cluster holds at the end
/// (queue ∪ play history, from a linearizable read after recovery).
pub fn check_set(adds: &[(u64, Outcome)], final_ids: &HashSet<u64>) -> SetResult {
    let mut r = SetResult {
        attempted: adds.len(),
        ..Default::default()
    };
    let attempted: HashSet<u64> = adds.iter().map(|a| a.0).collect();
    for &(id, outcome) in adds {
        let present = final_ids.contains(&id);
        match (outcome, present) {
            (Outcome::Ok, true) => r.acknowledged += 1,
            (Outcome::Ok, false) => {
                r.acknowledged += 1;
                r.lost.push(id)
            }
            (Outcome::Info, true) => r.unknown_present += 1,
            (Outcome::Info, false) => r.unknown_absent += 1,
            (Outcome::Fail, true) => r.failed_but_present.push(id),
            (Outcome::Fail, false) => {}
        }
    }
    r.unexpected = final_ids
        .iter()
        .filter(|id| !attempted.contains(id))
        .copied()
        .collect();
    r.unexpected.sort_unstable();
    r.lost.sort_unstable();
    r.failed_but_present.sort_unstable();
    r.valid = r.lost.is_empty() && r.unexpected.is_empty() && r.failed_but_present.is_empty();
    r
}

#[derive(Debug, Serialize)]
pub struct CounterKeyResult {
    pub key: u64,
    pub acknowledged: i64,
    pub unknown: i64,
    /// `None` when the final read failed.
    pub final_value: Option<i64>,
    pub valid: bool,
}

#[derive(Debug, Serialize)]
pub struct CounterResult {
    pub valid: bool,
    pub keys: Vec<CounterKeyResult>,
}

/// Each increment is `(key, outcome)` and adds 1 to that key's counter (the caller maps
/// down-votes to +1 by negating the final value). A key is valid when
/// acknowledged ≤ final ≤ acknowledged + unknown. A missing final value is invalid: after
/// recovery the read must succeed.
pub fn check_counter(
    incs: &[(u64, Outcome)],
    final_values: &BTreeMap<u64, Option<i64>>,
) -> CounterResult {
    let mut acc: BTreeMap<u64, (i64, i64)> = final_values.keys().map(|&k| (k, (0, 0))).collect();
    for &(k, o) in incs {
        let e = acc.entry(k).or_default();
        match o {
            Outcome::Ok => e.0 += 1,
            Outcome::Info => e.1 += 1,
            Outcome::Fail => {}
        }
    }
    let keys: Vec<CounterKeyResult> = acc
        .into_iter()
        .map(|(key, (ok, unknown))| {
            let final_value = final_values.get(&key).copied().flatten();
            let valid = final_value.is_some_and(|v| ok <= v && v <= ok + unknown);
            CounterKeyResult {
                key,
                acknowledged: ok,
                unknown,
                final_value,
                valid,
            }
        })
        .collect();
    CounterResult {
        valid: keys.iter().all(|k| k.valid),
        keys,
    }
}

/// Per-user votes `(track, user, outcome)`: a user counts once per track however often they
/// vote. A track is valid when (users with an acknowledged vote) ≤ final ≤ (users with an
/// acknowledged or unknown vote); above that, some user's vote was counted twice.
pub fn check_user_votes(
    votes: &[(u64, u64, Outcome)],
    final_values: &BTreeMap<u64, Option<i64>>,
) -> CounterResult {
    let mut users: BTreeMap<u64, (BTreeSet<u64>, BTreeSet<u64>)> = final_values
        .keys()
        .map(|&k| (k, Default::default()))
        .collect();
    for &(track, user, outcome) in votes {
        let (acknowledged, maybe) = users.entry(track).or_default();
        match outcome {
            Outcome::Ok => {
                acknowledged.insert(user);
                maybe.insert(user);
            }
            Outcome::Info => {
                maybe.insert(user);
            }
            Outcome::Fail => {}
        }
    }
    let keys: Vec<CounterKeyResult> = users
        .into_iter()
        .map(|(key, (acknowledged, maybe))| {
            let (ok, any) = (acknowledged.len() as i64, maybe.len() as i64);
            let final_value = final_values.get(&key).copied().flatten();
            CounterKeyResult {
                key,
                acknowledged: ok,
                unknown: any - ok,
                final_value,
                valid: final_value.is_some_and(|v| ok <= v && v <= any),
            }
        })
        .collect();
    CounterResult {
        valid: keys.iter().all(|k| k.valid),
        keys,
    }
}

#[derive(Debug, Default, Serialize)]
pub struct PlayResult {
    pub valid: bool,
    pub plays_ok: usize,
    pub plays_unknown: usize,
    pub history_len: usize,
    /// Tracks that appear more than once in the history, or were returned by two ok plays.
    pub played_twice: Vec<u64>,
    /// Acknowledged plays missing from the history.
    pub lost_plays: Vec<u64>,
    /// Played tracks that were never added.
    pub never_added: Vec<u64>,
    /// Nodes whose history is not a prefix of (or equal to) the longest one, with the first
    /// differing position.
    pub divergent_nodes: Vec<(u64, usize)>,
}

/// `plays`: outcome and returned track of each play_next. `history`: the authoritative
/// (linearizable) history after recovery. `node_histories`: each node's own view (stale reads),
/// which must all be prefixes of one order. `added`: every track id any client tried to add.
pub fn check_exactly_once(
    plays: &[(Outcome, Option<u64>)],
    history: &[u64],
    node_histories: &[(u64, Vec<u64>)],
    added: &HashSet<u64>,
) -> PlayResult {
    let mut r = PlayResult {
        history_len: history.len(),
        ..Default::default()
    };
    let mut count: HashMap<u64, usize> = HashMap::new();
    for id in history {
        *count.entry(*id).or_default() += 1;
    }
    let mut twice: BTreeSet<u64> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| *id)
        .collect();
    let mut ok_seen = HashSet::new();
    let in_history: HashSet<u64> = history.iter().copied().collect();
    for (o, id) in plays {
        match o {
            Outcome::Ok => r.plays_ok += 1,
            Outcome::Info => r.plays_unknown += 1,
            Outcome::Fail => {}
        }
        if let (Outcome::Ok, Some(id)) = (o, id) {
            if !ok_seen.insert(*id) {
                twice.insert(*id);
            }
            if !in_history.contains(id) {
                r.lost_plays.push(*id);
            }
        }
    }
    r.played_twice = twice.into_iter().collect();
    r.never_added = history
        .iter()
        .filter(|id| !added.contains(id))
        .copied()
        .collect();
    // Every node's view must be a prefix of the longest view (one total order).
    let longest = node_histories
        .iter()
        .map(|(_, h)| h)
        .chain(std::iter::once(&history.to_vec()))
        .max_by_key(|h| h.len())
        .cloned()
        .unwrap_or_default();
    for (node, h) in node_histories.iter().map(|(n, h)| (*n, h.as_slice())) {
        if let Some(pos) = h.iter().zip(&longest).position(|(a, b)| a != b) {
            r.divergent_nodes.push((node, pos));
        }
    }
    if let Some(pos) = history.iter().zip(&longest).position(|(a, b)| a != b) {
        r.divergent_nodes.push((0, pos));
    }
    r.valid = r.played_twice.is_empty()
        && r.lost_plays.is_empty()
        && r.never_added.is_empty()
        && r.divergent_nodes.is_empty();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn set_valid_with_unknowns_either_way() {
        let adds = [(1, Ok), (2, Info), (3, Info), (4, Fail)];
        let fin: HashSet<u64> = [1, 2].into();
        let r = check_set(&adds, &fin);
        assert!(r.valid, "{r:?}");
        assert_eq!((r.unknown_present, r.unknown_absent), (1, 1));
    }

    #[test]
    fn set_catches_lost_unexpected_and_failed_present() {
        let adds = [(1, Ok), (2, Ok), (4, Fail)];
        let fin: HashSet<u64> = [1, 4, 9].into();
        let r = check_set(&adds, &fin);
        assert!(!r.valid);
        assert_eq!(r.lost, vec![2]);
        assert_eq!(r.unexpected, vec![9]);
        assert_eq!(r.failed_but_present, vec![4]);
    }

    #[test]
    fn user_votes_count_each_user_once() {
        use Outcome::{Fail, Info, Ok};
        let votes = [
            (1, 7, Ok),
            (1, 7, Ok),
            (1, 8, Info),
            (1, 9, Fail),
            (2, 7, Info),
        ];
        for (v1, v2, ok) in [
            (1, 0, true),
            (2, 1, true),
            (3, 0, false),
            (0, 0, false),
            (2, 2, false),
        ] {
            let finals = BTreeMap::from([(1, Some(v1)), (2, Some(v2))]);
            assert_eq!(
                check_user_votes(&votes, &finals).valid,
                ok,
                "finals {v1} {v2}"
            );
        }
    }

    #[test]
    fn counter_bounds() {
        let incs = [(7, Ok), (7, Ok), (7, Info), (7, Fail), (8, Ok)];
        for (v, ok) in [(1, false), (2, true), (3, true), (4, false)] {
            let fin = BTreeMap::from([(7, Some(v)), (8, Some(1))]);
            assert_eq!(check_counter(&incs, &fin).valid, ok, "final {v}");
        }
        // A key whose final read failed cannot be vouched for.
        let fin = BTreeMap::from([(7, Some(2)), (8, None)]);
        assert!(!check_counter(&incs, &fin).valid);
    }

    #[test]
    fn exactly_once_valid() {
        let added: HashSet<u64> = [1, 2, 3, 4].into();
        let plays = [(Ok, Some(1)), (Info, None), (Ok, Some(3)), (Fail, None)];
        // Node 3 lags behind: a prefix is fine. The unknown play did happen (2).
        let nodes = vec![(1, vec![1, 2, 3]), (2, vec![1, 2, 3]), (3, vec![1, 2])];
        let r = check_exactly_once(&plays, &[1, 2, 3], &nodes, &added);
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn exactly_once_catches_double_play_loss_and_divergence() {
        let added: HashSet<u64> = [1, 2, 3].into();
        let r = check_exactly_once(&[(Ok, Some(1)), (Ok, Some(1))], &[1], &[], &added);
        assert_eq!(r.played_twice, vec![1]);
        let r = check_exactly_once(&[], &[1, 2, 1], &[], &added);
        assert_eq!(r.played_twice, vec![1]);
        let r = check_exactly_once(&[(Ok, Some(3))], &[1], &[], &added);
        assert_eq!(r.lost_plays, vec![3]);
        let r = check_exactly_once(&[], &[1, 9], &[], &added);
        assert_eq!(r.never_added, vec![9]);
        let nodes = vec![(1, vec![1, 2, 3]), (2, vec![1, 3])];
        let r = check_exactly_once(&[], &[1, 2, 3], &nodes, &added);
        assert_eq!(r.divergent_nodes, vec![(2, 1)]);
        assert!(!r.valid);
    }
}

#[derive(Debug, Default, Serialize)]
pub struct UploadResult {
    pub valid: bool,
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown_present: usize,
    pub unknown_absent: usize,
    /// Acknowledged uploads some node does not list (number, node).
    pub lost: Vec<(u64, u64)>,
    /// Refused uploads that a node lists anyway.
    pub failed_but_present: Vec<u64>,
    /// Uploads listed on some nodes and not on others, or as other tracks.
    pub nodes_disagree: Vec<u64>,
    /// Uploads that became more than one track.
    pub duplicated: Vec<u64>,
    /// Tracks a node listed that no client uploaded.
    pub unexpected: Vec<u64>,
    /// Tracks a node did not serve byte-identical: (upload, track, node, what came).
    pub wrong_bytes: Vec<(u64, u64, u64, String)>,
}

/// `uploads`: every upload (its number, outcome and, when acknowledged, its track id);
/// `nodes`: what each node lists and serves after recovery. An acknowledged upload must be
/// listed on every node as its track and served byte-identical there; a refused one nowhere;
/// an unknown one either everywhere (complete) or nowhere.
pub fn check_uploads(
    uploads: &[(u64, Outcome, Option<u64>)],
    nodes: &[crate::workload::NodeUploads],
) -> UploadResult {
    let mut r = UploadResult {
        attempted: uploads.len(),
        ..Default::default()
    };
    let attempted: HashSet<u64> = uploads.iter().map(|u| u.0).collect();
    for &(n, outcome, track) in uploads {
        let listings: Vec<Option<&Vec<u64>>> =
            nodes.iter().map(|node| node.listed.get(&n)).collect();
        if listings.iter().any(|l| l.is_some_and(|ids| ids.len() > 1)) {
            r.duplicated.push(n);
        }
        if listings.windows(2).any(|w| w[0] != w[1]) {
            r.nodes_disagree.push(n);
        }
        let present = listings.iter().any(Option::is_some);
        match outcome {
            Outcome::Ok => {
                r.acknowledged += 1;
                for (node, listed) in nodes.iter().zip(&listings) {
                    let as_acknowledged =
                        listed.is_some_and(|ids| track.is_some_and(|t| ids.contains(&t)));
                    if !as_acknowledged {
                        r.lost.push((n, node.node));
                    }
                }
            }
            Outcome::Info if present => r.unknown_present += 1,
            Outcome::Info => r.unknown_absent += 1,
            Outcome::Fail if present => r.failed_but_present.push(n),
            Outcome::Fail => {}
        }
    }
    for node in nodes {
        r.unexpected
            .extend(node.listed.keys().filter(|n| !attempted.contains(n)));
        r.wrong_bytes.extend(
            node.wrong
                .iter()
                .map(|(n, track, what)| (*n, *track, node.node, what.clone())),
        );
    }
    r.unexpected.sort_unstable();
    r.unexpected.dedup();
    r.valid = r.lost.is_empty()
        && r.failed_but_present.is_empty()
        && r.nodes_disagree.is_empty()
        && r.duplicated.is_empty()
        && r.unexpected.is_empty()
        && r.wrong_bytes.is_empty();
    r
}

#[cfg(test)]
mod upload_tests {
    use super::*;
    use crate::workload::NodeUploads;

    fn node(id: u64, listed: &[(u64, u64)]) -> NodeUploads {
        let mut n = NodeUploads {
            node: id,
            ..Default::default()
        };
        for &(upload, track) in listed {
            n.listed.entry(upload).or_default().push(track);
        }
        n
    }

    #[test]
    fn uploads_must_be_everywhere_or_nowhere_and_served_whole() {
        let uploads = [
            (1, Outcome::Ok, Some(10)),
            (2, Outcome::Info, None),
            (3, Outcome::Fail, None),
            (4, Outcome::Info, None),
        ];
        let good = [(1, 10), (2, 20)];
        let r = check_uploads(&uploads, &[node(1, &good), node(2, &good)]);
        assert!(r.valid, "{r:?}");
        assert_eq!((r.unknown_present, r.unknown_absent), (1, 1));

        let r = check_uploads(&uploads, &[node(1, &good), node(2, &[(1, 10)])]);
        assert_eq!(r.nodes_disagree, [2], "an unknown upload on one node only");
        let r = check_uploads(&uploads, &[node(1, &[(2, 20)]), node(2, &[(2, 20)])]);
        assert_eq!(r.lost, [(1, 1), (1, 2)], "an acknowledged upload missing");
        let r = check_uploads(
            &uploads,
            &[node(1, &[(1, 10), (3, 30)]), node(2, &[(1, 10), (3, 30)])],
        );
        assert_eq!(r.failed_but_present, [3]);
        let mut wrong = node(1, &good);
        wrong.wrong.push((1, 10, "7 bytes".into()));
        let r = check_uploads(&uploads, &[wrong, node(2, &good)]);
        assert!(!r.valid && r.wrong_bytes.len() == 1);
        let r = check_uploads(
            &uploads,
            &[node(1, &[(1, 10), (1, 11)]), node(2, &[(1, 10), (1, 11)])],
        );
        assert_eq!(r.duplicated, [1]);
    }
}
