//! A Wing–Gong / Lowe style linearizability checker (the algorithm behind Knossos' `wgl`),
//! generic over a sequential model.
//!
//! Input: completed operations (`ok`, with an invocation and a completion time) and operations
//! whose outcome is unknown (invoked, never known to have completed: a timeout or a dropped
//! connection after the request was sent). An unknown op may have taken effect at any point
//! after its invocation, or never, so it has no deadline and need not be linearized at all.
//! Definitely failed ops are left out by the caller: they had no effect.
//!
//! Search: depth-first over "which ops are linearized so far + model state", memoised so a
//! configuration is explored once. An op may be linearized next only if it was invoked before
//! the earliest completion among the ops not yet linearized (otherwise that op precedes it in
//! real time). The history is linearizable when every `ok` op has been linearized.

use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification. `step` applies an op (its input *and* observed output) and
/// returns the next state, or `None` when the output is impossible in this state.
pub trait Model: Clone + Eq + Hash + Debug {
    type Op: Clone + Debug + PartialEq;
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// A single integer register: writes of a value, reads that observed a value (`None` = the
/// register was never written).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Register(pub Option<i64>);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RegisterOp {
    Write(i64),
    Read(Option<i64>),
}

impl Model for Register {
    type Op = RegisterOp;
    fn step(&self, op: &RegisterOp) -> Option<Self> {
        match op {
            RegisterOp::Write(v) => Some(Register(Some(*v))),
            RegisterOp::Read(v) => (*v == self.0).then(|| self.clone()),
        }
    }
}

/// A counter: additions of a delta, reads that observed a value. (The counter workload checks
/// bounds on its final value instead; this model shows the search is generic.)
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Counter(pub i64);

#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum CounterOp {
    Add(i64),
    Read(i64),
}

#[cfg(test)]
impl Model for Counter {
    type Op = CounterOp;
    fn step(&self, op: &CounterOp) -> Option<Self> {
        match op {
            CounterOp::Add(d) => Some(Counter(self.0 + d)),
            CounterOp::Read(v) => (*v == self.0).then(|| self.clone()),
        }
    }
}

/// Drops the writes of unknown outcome whose value no read observed. Sound for a register: an
/// unknown write has no deadline, so it can go at the very end of any linearization of the rest;
/// and in a linearization that placed it earlier no read sits between it and the next write (a
/// read there would have observed its value), so leaving it out still linearizes the rest. It
/// matters for the search: an unknown write stays a candidate until linearized, and a few dozen
/// of them (requests that timed out around a leader change) multiply the configurations: a CI
/// history of ~4,500 register ops with 30 of them ran out of a 20,000,000-state budget.
pub fn without_unobserved_unknown_writes(
    entries: Vec<Entry<RegisterOp>>,
) -> Vec<Entry<RegisterOp>> {
    let observed: HashSet<i64> = entries
        .iter()
        .filter_map(|e| match e.op {
            RegisterOp::Read(Some(v)) if e.complete.is_some() => Some(v),
            _ => None,
        })
        .collect();
    entries
        .into_iter()
        .filter(|e| match e.op {
            RegisterOp::Write(v) => e.complete.is_some() || observed.contains(&v),
            RegisterOp::Read(_) => true,
        })
        .collect()
}

/// One operation of the history handed to the checker.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    /// Caller's id, echoed in reports (e.g. the history line number).
    pub id: u64,
    pub invoke: u64,
    /// `None` = outcome unknown: may have taken effect at any time after `invoke`, or never.
    pub complete: Option<u64>,
    pub op: O,
}

#[derive(Debug, Serialize)]
pub struct LinResult {
    /// `Some(true)` linearizable, `Some(false)` not, `None` the search budget ran out.
    pub valid: Option<bool>,
    pub ops: usize,
    pub states_explored: usize,
    /// When not linearizable: the ok op that could not be placed, with the model state(s) of
    /// the deepest configuration reached and the ops linearized last before it.
    pub failure: Option<LinFailure>,
}

#[derive(Debug, Serialize)]
pub struct LinFailure {
    /// The op with the earliest completion that no order could linearize.
    pub op_id: u64,
    pub op: String,
    /// Model state(s) in which it was tried at the deepest point of the search.
    pub states: Vec<String>,
    /// Ids of the last ops linearized (in order) before the stuck point.
    pub linearized_tail: Vec<u64>,
    /// Ids of the other ops that were candidates at that point.
    pub concurrent: Vec<u64>,
}

/// Check `history` against `init`. `budget` bounds the number of configurations explored.
pub fn check<M: Model>(init: M, history: &[Entry<M::Op>], budget: usize) -> LinResult {
    let mut ops: Vec<&Entry<M::Op>> = history.iter().collect();
    ops.sort_by_key(|e| (e.invoke, e.complete.unwrap_or(u64::MAX)));
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let must = ops.iter().filter(|e| e.complete.is_some()).count();

    let is_set = |bits: &[u64], i: usize| bits[i / 64] >> (i % 64) & 1 == 1;
    // Ops that may go next from `bits`: invoked before the earliest completion among the ops
    // not yet linearized. Unknown ops with the same input are interchangeable (no deadline,
    // same effect), so only the earliest-invoked unlinearized one of each kind is offered:
    // this keeps a history with many timed-out writes from exploding into every subset.
    let candidates = |bits: &[u64]| -> Vec<usize> {
        let mut min_ret = u64::MAX;
        let mut first = None;
        for (i, e) in ops.iter().enumerate() {
            if is_set(bits, i) {
                continue;
            }
            if e.invoke >= min_ret {
                break;
            }
            first.get_or_insert(i);
            if let Some(c) = e.complete {
                min_ret = min_ret.min(c);
            }
        }
        let mut out: Vec<usize> = Vec::new();
        let Some(start) = first else { return out };
        for i in start..n {
            if is_set(bits, i) {
                continue;
            }
            let e = ops[i];
            if e.invoke >= min_ret {
                break;
            }
            if e.complete.is_none()
                && out
                    .iter()
                    .any(|&j| ops[j].complete.is_none() && ops[j].op == e.op)
            {
                continue;
            }
            out.push(i);
        }
        out
    };

    struct Frame<M> {
        state: M,
        cands: Vec<usize>,
        next: usize,
        done_ok: usize,
    }
    let mut bits = vec![0u64; words];
    // Zobrist hashing: the linearized set is keyed by the XOR of one random word per op, so
    // memoising a configuration costs O(1) instead of copying a bitset of the whole history.
    // A 64-bit collision (which could prune a branch) is vanishingly unlikely at these sizes.
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    let zobrist: Vec<u64> = (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        })
        .collect();
    let mut zh = 0u64;
    let mut seen: HashSet<(u64, M)> = HashSet::new();
    let mut path: Vec<usize> = Vec::new();
    let mut stack = vec![Frame {
        state: init.clone(),
        cands: candidates(&bits),
        next: 0,
        done_ok: 0,
    }];
    seen.insert((zh, init));
    let mut explored = 1usize;
    // Deepest point (most ok ops linearized) for the report.
    let mut best: (usize, Vec<usize>, Vec<u64>, Vec<String>) = (0, vec![], bits.clone(), vec![]);

    while let Some(top) = stack.last_mut() {
        if top.done_ok == must {
            return LinResult {
                valid: Some(true),
                ops: n,
                states_explored: explored,
                failure: None,
            };
        }
        if top.next == 0 && top.done_ok >= best.0 {
            if top.done_ok > best.0 {
                best = (top.done_ok, path.clone(), bits.clone(), vec![]);
            }
            if best.3.len() < 8 {
                best.3.push(format!("{:?}", top.state));
            }
        }
        if top.next >= top.cands.len() {
            stack.pop();
            if let Some(i) = path.pop() {
                bits[i / 64] &= !(1 << (i % 64));
                zh ^= zobrist[i];
            }
            continue;
        }
        let i = top.cands[top.next];
        top.next += 1;
        let Some(next_state) = top.state.step(&ops[i].op) else {
            continue;
        };
        let done_ok = top.done_ok + usize::from(ops[i].complete.is_some());
        if !seen.insert((zh ^ zobrist[i], next_state.clone())) {
            continue;
        }
        bits[i / 64] |= 1 << (i % 64);
        zh ^= zobrist[i];
        explored += 1;
        if explored > budget {
            return LinResult {
                valid: None,
                ops: n,
                states_explored: explored,
                failure: None,
            };
        }
        path.push(i);
        let cands = candidates(&bits);
        stack.push(Frame {
            state: next_state,
            cands,
            next: 0,
            done_ok,
        });
    }

    // Not linearizable: report the ok op with the earliest completion left at the deepest point.
    let (_, best_path, best_bits, states) = best;
    let stuck = (0..n)
        .filter(|&i| !is_set(&best_bits, i) && ops[i].complete.is_some())
        .min_by_key(|&i| ops[i].complete);
    let failure = stuck.map(|s| LinFailure {
        op_id: ops[s].id,
        op: format!("{:?}", ops[s].op),
        states,
        linearized_tail: best_path
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(|&i| ops[i].id)
            .collect(),
        concurrent: candidates(&best_bits)
            .into_iter()
            .filter(|&i| i != s)
            .map(|i| ops[i].id)
            .collect(),
    });
    LinResult {
        valid: Some(false),
        ops: n,
        states_explored: explored,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e<O>(id: u64, invoke: u64, complete: Option<u64>, op: O) -> Entry<O> {
        Entry {
            id,
            invoke,
            complete,
            op,
        }
    }
    const B: usize = 1_000_000;
    use CounterOp::{Add, Read as CRead};
    use RegisterOp::{Read, Write};

    #[test]
    fn sequential_register_valid_and_stale_read_invalid() {
        let ok = [
            e(1, 0, Some(1), Write(1)),
            e(2, 2, Some(3), Read(Some(1))),
            e(3, 4, Some(5), Write(2)),
            e(4, 6, Some(7), Read(Some(2))),
        ];
        assert_eq!(check(Register(None), &ok, B).valid, Some(true));
        // A read after the write of 2 completed returns the old value: the classic stale read.
        let bad = [
            e(1, 0, Some(1), Write(1)),
            e(3, 4, Some(5), Write(2)),
            e(4, 6, Some(7), Read(Some(1))),
        ];
        let r = check(Register(None), &bad, B);
        assert_eq!(r.valid, Some(false));
        assert_eq!(r.failure.map(|f| f.op_id), Some(4));
    }

    #[test]
    fn unknown_writes_nobody_read_are_dropped_and_the_verdict_stays() {
        // Write 9's outcome is unknown and nobody read 9: it goes. Write 7's is unknown too, but
        // a read saw 7, so it stays (and must be linearized for that read).
        let h = vec![
            e(1, 0, Some(1), Write(1)),
            e(2, 2, None, Write(9)),
            e(3, 3, None, Write(7)),
            e(4, 10, Some(11), Read(Some(7))),
            e(5, 12, Some(13), Read(Some(7))),
        ];
        let kept = without_unobserved_unknown_writes(h.clone());
        assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3, 4, 5]);
        assert_eq!(check(Register(None), &h, B).valid, Some(true));
        assert_eq!(check(Register(None), &kept, B).valid, Some(true));
        // A stale read stays invalid without the unobserved write.
        let mut bad = h;
        bad.push(e(6, 14, Some(15), Read(Some(1))));
        let kept = without_unobserved_unknown_writes(bad.clone());
        assert_eq!(check(Register(None), &bad, B).valid, Some(false));
        assert_eq!(check(Register(None), &kept, B).valid, Some(false));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        // Read overlaps the write: both old and new values are fine. A naive checker that
        // orders by invocation (or completion) time would reject one of them.
        for seen in [Some(1), Some(2)] {
            let h = [
                e(1, 0, Some(1), Write(1)),
                e(2, 2, Some(10), Write(2)),
                e(3, 3, Some(4), Read(seen)),
            ];
            assert_eq!(check(Register(None), &h, B).valid, Some(true), "{seen:?}");
        }
        // The read completes before the write is invoked, yet sees its value: impossible.
        let h = [e(1, 5, Some(10), Write(2)), e(2, 0, Some(4), Read(Some(2)))];
        assert_eq!(check(Register(None), &h, B).valid, Some(false));
    }

    #[test]
    fn read_ordering_across_overlapping_reads_is_checked() {
        // Two reads, both concurrent with the write, but the first to finish saw the new
        // value and a later one (invoked after it finished) saw the old one: not linearizable,
        // though each read alone is fine with the write.
        let h = [
            e(1, 0, Some(1), Write(1)),
            e(2, 2, Some(20), Write(2)),
            e(3, 3, Some(5), Read(Some(2))),
            e(4, 6, Some(8), Read(Some(1))),
        ];
        assert_eq!(check(Register(None), &h, B).valid, Some(false));
    }

    #[test]
    fn unknown_ops_may_or_may_not_have_happened() {
        // A timed-out write later observed: fine (it happened).
        let h = [e(1, 0, None, Write(7)), e(2, 50, Some(51), Read(Some(7)))];
        assert_eq!(check(Register(None), &h, B).valid, Some(true));
        // A timed-out write never observed: fine too (it did not happen).
        let h = [e(1, 0, None, Write(7)), e(2, 50, Some(51), Read(None))];
        assert_eq!(check(Register(None), &h, B).valid, Some(true));
        // But it cannot take effect before it was invoked.
        let h = [e(1, 10, None, Write(7)), e(2, 0, Some(5), Read(Some(7)))];
        assert_eq!(check(Register(None), &h, B).valid, Some(false));
        // Nor un-happen: seen, then not seen again without another write.
        let h = [
            e(1, 0, None, Write(7)),
            e(2, 50, Some(51), Read(Some(7))),
            e(3, 60, Some(61), Read(None)),
        ];
        assert_eq!(check(Register(None), &h, B).valid, Some(false));
    }

    #[test]
    fn counter_with_unknown_increments() {
        // Two ok increments and three unknown ones: any read between 2 and 5 at the end is
        // fine, 1 or 6 is not. A checker that dropped unknown ops (assumed failed) would reject
        // 3; one that assumed they succeeded would reject 2.
        for (final_read, valid) in [(1, false), (2, true), (3, true), (5, true), (6, false)] {
            let mut h = vec![e(1, 0, Some(1), Add(1)), e(2, 2, Some(3), Add(1))];
            for k in 0..3 {
                h.push(e(10 + k, 4 + k, None, Add(1)));
            }
            h.push(e(20, 100, Some(101), CRead(final_read)));
            assert_eq!(
                check(Counter(0), &h, B).valid,
                Some(valid),
                "read {final_read}"
            );
        }
    }

    #[test]
    fn counter_reads_must_not_go_backwards() {
        let h = [
            e(1, 0, Some(1), Add(-1)),
            e(2, 2, Some(3), CRead(-1)),
            e(3, 4, Some(20), Add(-1)),
            e(4, 5, Some(6), CRead(-2)),
            e(5, 7, Some(8), CRead(-1)),
        ];
        let r = check(Counter(0), &h, B);
        assert_eq!(r.valid, Some(false));
        assert_eq!(r.failure.map(|f| f.op_id), Some(5));
    }

    #[test]
    fn many_unknown_ops_stay_tractable() {
        // 200 timed-out increments then reads: the symmetry reduction keeps this linear-ish.
        let mut h = Vec::new();
        for k in 0..200u64 {
            h.push(e(k, k * 10, None, Add(1)));
            h.push(e(1000 + k, k * 10 + 1, Some(k * 10 + 2), CRead(0)));
        }
        h.push(e(5000, 10_000, Some(10_001), CRead(150)));
        let r = check(Counter(0), &h, B);
        assert_eq!(r.valid, Some(true), "{r:?}");
    }
}
