//! Run outputs that are derived from the history: the latency/availability SVG, the
//! unavailability after leader-disrupting faults, and the availability of every fault window
//! against the quiet stretches between them.

use crate::checks::Outcome;
use crate::schedule::Nemesis;
use crate::{AppliedFault, Op};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Serialize)]
pub struct Unavailability {
    pub fault: String,
    pub targets: Vec<u64>,
    pub start_s: f64,
    /// Longest stretch, from the fault's start until the next fault (or the end of the
    /// workload), in which no operation that needs a quorum completed ok.
    pub longest_gap_s: f64,
    pub gap_from_s: f64,
    /// The same for writes alone: reads keep a leader looking available while its writes
    /// hang (a deposed-then-re-elected leader's stuck proposer was found that way).
    pub longest_write_gap_s: f64,
    pub write_gap_from_s: f64,
}

/// An op "needs a quorum" unless it is a stale read (those stay available in a minority).
fn counts_for_availability(op: &Op) -> bool {
    op.outcome == Outcome::Ok && !(op.f == "read" && op.stale)
}

pub fn unavailability(ops: &[Op], faults: &[AppliedFault], end_us: u64) -> Vec<Unavailability> {
    let completed = |writes_only: bool| {
        let mut ok: Vec<u64> = ops
            .iter()
            .filter(|o| counts_for_availability(o) && !(writes_only && o.f == "read"))
            .map(|o| o.complete_us)
            .collect();
        ok.sort_unstable();
        ok
    };
    let (ok, ok_writes) = (completed(false), completed(true));
    let mut out = Vec::new();
    for (k, f) in faults.iter().enumerate() {
        if !f.kind.disrupts_leader() {
            continue;
        }
        let start = f.applied_us;
        let horizon = faults
            .get(k + 1)
            .map(|n| n.applied_us)
            .unwrap_or(end_us)
            .max(start);
        let (gap, from) = longest_gap(&ok, start, horizon);
        let (write_gap, write_from) = longest_gap(&ok_writes, start, horizon);
        out.push(Unavailability {
            fault: f.kind.name().to_string(),
            targets: f.targets.clone(),
            start_s: start as f64 / 1e6,
            longest_gap_s: gap as f64 / 1e6,
            gap_from_s: from as f64 / 1e6,
            longest_write_gap_s: write_gap as f64 / 1e6,
            write_gap_from_s: write_from as f64 / 1e6,
        });
    }
    out
}

/// Availability in one stretch of the run: a fault from when it was applied until it was healed,
/// or a quiet stretch between faults.
#[derive(Debug, Serialize)]
pub struct Window {
    /// The fault's name, or `quiet`.
    pub kind: String,
    pub targets: Vec<u64>,
    /// Loss percentage or delay milliseconds, as the fault had them.
    pub param: u32,
    pub start_s: f64,
    pub end_s: f64,
    /// Operations that need a quorum and completed ok in the window, and their rate.
    pub ok: usize,
    pub ok_per_s: f64,
    pub longest_gap_s: f64,
    /// Longer without an ok operation than the fault should cost ([`expected_cost_s`]).
    pub stalled: bool,
}

/// Seconds without a quorum operation that a fault of `kind` may cost: an election and a
/// retried request for a fault that may take the leader away, next to nothing for loss and
/// delay (nothing needs electing: the cluster only gets slower); no node can answer while every
/// node is without power.
pub fn expected_cost_s(kind: Option<Nemesis>) -> f64 {
    match kind {
        Some(Nemesis::PowerLossAll) => f64::INFINITY,
        None | Some(Nemesis::Loss) => 3.0,
        Some(kind) if kind.delays() => 3.0,
        Some(_) => 6.0,
    }
}

/// Every fault window and every quiet stretch between them, in order.
pub fn windows(ops: &[Op], faults: &[AppliedFault], end_us: u64) -> Vec<Window> {
    let mut ok: Vec<u64> = ops
        .iter()
        .filter(|o| counts_for_availability(o))
        .map(|o| o.complete_us)
        .collect();
    ok.sort_unstable();
    let window = |kind: Option<Nemesis>, targets: Vec<u64>, param, start: u64, end: u64| {
        let end = end.max(start);
        let count = ok.iter().filter(|&&t| t > start && t <= end).count();
        let secs = (end - start) as f64 / 1e6;
        let (gap, _) = longest_gap(&ok, start, end);
        let gap_s = gap as f64 / 1e6;
        Window {
            kind: kind.map_or("quiet", Nemesis::name).to_string(),
            targets,
            param,
            start_s: start as f64 / 1e6,
            end_s: end as f64 / 1e6,
            ok: count,
            ok_per_s: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            longest_gap_s: gap_s,
            stalled: gap_s > expected_cost_s(kind),
        }
    };
    let mut out = Vec::new();
    let mut quiet_from = 0;
    for (k, f) in faults.iter().enumerate() {
        let next = faults.get(k + 1).map_or(end_us, |n| n.applied_us);
        let healed = f.healed_us.unwrap_or(next).min(next);
        if f.applied_us > quiet_from {
            out.push(window(None, Vec::new(), 0, quiet_from, f.applied_us));
        }
        out.push(window(
            Some(f.kind),
            f.targets.clone(),
            f.param,
            f.applied_us,
            healed,
        ));
        quiet_from = healed;
    }
    if end_us > quiet_from {
        out.push(window(None, Vec::new(), 0, quiet_from, end_us));
    }
    out
}

/// The longest stretch in `(start, horizon]` without a time in `ok` (sorted), and where it began.
fn longest_gap(ok: &[u64], start: u64, horizon: u64) -> (u64, u64) {
    let mut prev = start;
    let mut best = (0u64, start);
    for &t in ok.iter().filter(|&&t| t > start && t <= horizon) {
        if t - prev > best.0 {
            best = (t - prev, prev);
        }
        prev = t;
    }
    if horizon - prev > best.0 {
        best = (horizon - prev, prev);
    }
    best
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Per-op latency (log scale) against invocation time, coloured by outcome, fault windows
/// shaded and labelled, plus a strip of ok ops per second underneath.
pub fn svg(ops: &[Op], faults: &[AppliedFault], end_us: u64, title: &str) -> String {
    let (w, h) = (1200.0, 560.0);
    let (l, r, t, b) = (70.0, 20.0, 40.0, 150.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let end_s = (end_us as f64 / 1e6).max(1.0);
    let x = |s: f64| l + pw * (s / end_s).clamp(0.0, 1.0);
    // Latency axis: 0.1 ms .. 30 s, log10.
    let (lo, hi) = (-1.0f64, 30_000f64.log10());
    let y = |ms: f64| t + ph * (1.0 - ((ms.max(0.1).log10() - lo) / (hi - lo)).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{l}" y="20" font-size="14">{}</text>
"#,
        esc(title)
    );
    for f in faults {
        let x0 = x(f.applied_us as f64 / 1e6);
        let x1 = x(f.healed_us.unwrap_or(end_us) as f64 / 1e6);
        let targets: Vec<String> = f.targets.iter().map(|n| format!("n{n}")).collect();
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{t}" width="{:.1}" height="{ph}" fill="#f4c0c0" fill-opacity="0.45"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#900">{} {}</text>"##,
            (x1 - x0).max(1.0),
            x0 + 2.0,
            t + 12.0,
            f.kind.name(),
            targets.join(",")
        );
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0] {
        let yy = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 5.0,
            yy + 4.0,
            if ms < 1.0 {
                format!("{ms} ms")
            } else if ms < 1000.0 {
                format!("{ms:.0} ms")
            } else {
                format!("{:.0} s", ms / 1000.0)
            }
        );
    }
    let step = if end_s > 300.0 { 60.0 } else { 10.0 };
    let mut tick = 0.0;
    while tick <= end_s {
        let xx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{t}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{tick:.0}s</text>"##,
            t + ph,
            t + ph + 14.0
        );
        tick += step;
    }
    // A long run has hundreds of thousands of ops: draw every failed and unknown one but only
    // a sample of the ok ones, so the file stays small enough for a browser.
    let ok_stride = (ops.len() / 20_000).max(1);
    let drawn = ops
        .iter()
        .enumerate()
        .filter(|(k, o)| o.outcome != Outcome::Ok || k % ok_stride == 0)
        .map(|(_, o)| o);
    for o in drawn {
        let col = match o.outcome {
            Outcome::Ok => "#2a9d3a",
            Outcome::Fail => "#d62728",
            Outcome::Info => "#ff9900",
        };
        let lat = (o.complete_us.saturating_sub(o.invoke_us)) as f64 / 1000.0;
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{col}" fill-opacity="0.7"/>"#,
            x(o.invoke_us as f64 / 1e6),
            y(lat)
        );
    }
    // Availability strip: ok quorum ops completed per second.
    let secs = end_s.ceil() as usize + 1;
    let mut per = vec![0u32; secs];
    for o in ops.iter().filter(|o| counts_for_availability(o)) {
        let k = (o.complete_us / 1_000_000) as usize;
        if k < secs {
            per[k] += 1;
        }
    }
    let top = t + ph + 30.0;
    let sh = 80.0;
    let max = per.iter().copied().max().unwrap_or(1).max(1) as f64;
    for (k, c) in per.iter().enumerate() {
        let x0 = x(k as f64);
        let bw = (x(k as f64 + 1.0) - x0).max(0.5);
        let bh = sh * (*c as f64) / max;
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{bh:.1}" fill="#4a78c2"/>"##,
            top + sh - bh
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{:.1}" text-anchor="end">ok/s</text><text x="{}" y="{:.1}" text-anchor="end">max {max:.0}</text>
<line x1="{l}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#333"/>
<text x="{l}" y="{}" >latency (log) of each op at its invocation time: </text>
<circle cx="{}" cy="{}" r="4" fill="#2a9d3a"/><text x="{}" y="{}">ok</text>
<circle cx="{}" cy="{}" r="4" fill="#d62728"/><text x="{}" y="{}">failed</text>
<circle cx="{}" cy="{}" r="4" fill="#ff9900"/><text x="{}" y="{}">unknown (timeout)</text>
<rect x="{}" y="{}" width="12" height="8" fill="#f4c0c0"/><text x="{}" y="{}">fault window</text>
<text x="{}" y="{}">blue bars: ok ops needing a quorum, per second (stale reads excluded)</text>
</svg>
"##,
        l - 5.0,
        top + 10.0,
        l - 5.0,
        top + 22.0,
        l + pw,
        top + sh,
        top + sh,
        h - 12.0,
        l + 300.0,
        h - 16.0,
        l + 308.0,
        h - 12.0,
        l + 340.0,
        h - 16.0,
        l + 348.0,
        h - 12.0,
        l + 400.0,
        h - 16.0,
        l + 408.0,
        h - 12.0,
        l + 520.0,
        h - 20.0,
        l + 536.0,
        h - 12.0,
        l + 640.0,
        h - 12.0,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    fn ok_at(ms: u64) -> Op {
        Op {
            workload: Workload::Set,
            process: 0,
            node: 1,
            f: "add",
            key: None,
            value: None,
            outcome: Outcome::Ok,
            invoke_us: ms * 1000,
            complete_us: ms * 1000,
            stale: false,
            error: None,
        }
    }

    fn fault(kind: Nemesis, from_ms: u64, to_ms: u64) -> AppliedFault {
        AppliedFault {
            kind,
            targets: vec![1],
            param: 100,
            applied_us: from_ms * 1000,
            healed_us: Some(to_ms * 1000),
            description: String::new(),
        }
    }

    /// A delay window in which nothing completes for 5 s is flagged, though it took no leader
    /// away; the quiet stretches around it are measured too, and a kill whose gap is an
    /// election's length is not flagged.
    #[test]
    fn every_window_is_measured_and_a_silent_one_is_called_stalled() {
        let mut ops: Vec<Op> = (0..2_000).step_by(100).map(ok_at).collect();
        ops.extend((7_000..9_000).step_by(100).map(ok_at));
        ops.extend((13_000..20_000).step_by(100).map(ok_at));
        let faults = [
            fault(Nemesis::Delay, 2_000, 7_000),
            fault(Nemesis::KillLeader, 9_000, 14_000),
        ];
        let w = windows(&ops, &faults, 20_000_000);
        let kinds: Vec<&str> = w.iter().map(|w| w.kind.as_str()).collect();
        assert_eq!(kinds, ["quiet", "delay", "quiet", "kill-leader", "quiet"]);
        assert!(w[1].stalled && w[1].ok == 1, "{:?}", w[1]);
        assert!((w[1].longest_gap_s - 5.0).abs() < 1e-9);
        assert!(
            !w[3].stalled,
            "4 s without a leader is an election: {:?}",
            w[3]
        );
        assert!(!w[0].stalled && w[0].ok_per_s > 9.0, "{:?}", w[0]);
    }

    #[test]
    fn the_longest_gap_counts_from_the_fault_and_to_the_horizon() {
        // Completions at 3, 4 and 9 after a fault at 1, next fault at 10: the gap 4..9.
        assert_eq!(longest_gap(&[0, 3, 4, 9], 1, 10), (5, 4));
        // Nothing completes: the whole window, from the fault.
        assert_eq!(longest_gap(&[0, 12], 1, 10), (9, 1));
        // The last stretch, up to the horizon, counts too.
        assert_eq!(longest_gap(&[2, 3], 1, 10), (7, 3));
    }
}
