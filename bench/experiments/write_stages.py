#!/usr/bin/env python3
"""Where one replicated write spends its time: the stage timeline of `POST /vote` with one client.

    cargo build --release && python3 bench/experiments/write_stages.py [--seconds 5] [--node leader|follower]

Starts a 3-node cluster with the `chorus::stages` trace events on (RUST_LOG), sends writes one
at a time with wrk to the leader (or a follower), then lines the events of all three nodes' logs
up against each write's `write.start` on the receiving node: for every stage on every node, when
it first happened after the write started (median and p90, microseconds), and its median over the
slowest 1 % of writes (where the tail's time goes). All nodes run on one
machine, so their wall clocks agree.

Stages: write.start/write.done (the node that took the HTTP request), propose/committed (the
leader's openraft client_write), log.append/log.flushed (a node's log append and its fdatasync),
replicate.send/replicate.acked (the leader's AppendEntries to one follower), follower.append/
follower.acked (a follower handling it), apply.start/apply.done (a node's state machine).

Figures are printed; nothing here asserts a target.
"""
import argparse, datetime, os, re, statistics, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import Cluster, chorus_token, chorus_upload, http, make_mp3, wrk  # noqa: E402

LINE = re.compile(r'^(\S+Z)\s+TRACE\s.*chorus::stages: stage="([^"]+)"')


def events(path):
    out = []
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            out.append((t, m.group(2)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--node", choices=["leader", "follower"], default="leader",
                    help="which node takes the HTTP requests")
    ap.add_argument("--audio-mib", type=int, default=0, metavar="N",
                    help="upload N MiB of audio (10 MiB tracks) first, so snapshots carry a library")
    ap.add_argument("--slowest", type=int, default=0, metavar="N",
                    help="also print the stage timeline of the N slowest writes")
    args = ap.parse_args()
    os.environ["RUST_LOG"] = "info,openraft=warn,ractor=warn,ractor_cluster=warn,sled=warn,chorus::stages=trace"
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"])
    try:
        c.wait_ready()
        leader = c.leader()
        if args.audio_mib > 0:
            mp3 = os.path.join(tempfile.mkdtemp(prefix="chorus-stages-"), "song.mp3")
            make_mp3(mp3, 10)
            token = chorus_token(c.url(leader))
            for n in range(max(1, args.audio_mib // 10)):
                chorus_upload(c.url(leader), token, mp3, f"track {n}")
        http("POST", c.url(leader) + "/add_track", {"id": 1, "title": "bench", "artist": "a", "duration": 1})
        target = leader if args.node == "leader" else next(i for i in c.procs if i != leader)
        r = wrk(c.url(target), 1, args.seconds, method="POST", path="/vote?id=1&up=true")
        print(f"{r['rps']:.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms "
              f"(writes sent to the {args.node}, node {target}; leader is node {leader})")
        names = {i: ("leader" if i == leader else f"follower {i}") for i in c.procs}
        # Read before stop(), which removes the cluster's directory.
        timeline = sorted((t, names[i], stage) for i in c.procs
                          for t, stage in events(os.path.join(c.dir, f"n{i}.log")))
    finally:
        c.stop()
    entry = names[target]
    writes = []  # per write: {(node, stage): microseconds after its write.start}
    for k, (t0, node, stage) in enumerate(timeline):
        if (node, stage) != (entry, "write.start"):
            continue
        seen = {}
        # A follower's events count from its AppendEntries of this write on (before it, they
        # belong to the previous write, whose apply can land after this one started).
        joined = {names[leader], entry}
        for t, n, s in timeline[k + 1:]:
            if (n, s) == (entry, "write.start"):
                break  # the next write started: this one left no write.done (an error)
            if s == "follower.append":
                joined.add(n)
            if n in joined:
                seen.setdefault((n, s), (t - t0) * 1e6)
            if (n, s) == (entry, "write.done"):
                seen["at"] = t0
                writes.append(seen)
                break
    if not writes:
        sys.exit("no stage events found in the nodes' logs")
    done = (entry, "write.done")
    writes.sort(key=lambda w: w[done])
    # The slowest 1 % (at least one): where the tail's time goes.
    tail = writes[-max(1, len(writes) // 100):]
    print(f"{len(writes)} writes; the slowest 1 % ({len(tail)}) took {tail[0][done]:.0f} us or more")
    print(f"{'node':<12} {'stage':<16} {'median us':>10} {'p90 us':>8} {'slowest 1 %':>12}"
          f"  (from write.start on the {entry})")
    keys = {key for w in writes for key in w if key != "at"}
    rows = []
    for key in keys:
        us = sorted(w[key] for w in writes if key in w)
        if len(us) * 2 < len(writes):
            continue
        slow = [w[key] for w in tail if key in w]
        rows.append((statistics.median(us), key, us[int(len(us) * 0.9)],
                     statistics.median(slow) if slow else float("nan")))
    for median, (node, stage), p90, slow in sorted(rows):
        print(f"{node:<12} {stage:<16} {median:>10.0f} {p90:>8.0f} {slow:>12.0f}")
    first = min(w["at"] for w in writes)
    for w in writes[-args.slowest:] if args.slowest else []:
        steps = sorted((us, f"{node}/{stage}") for (node, stage), us in
                       ((k, v) for k, v in w.items() if k != "at"))
        print(f"\nwrite at +{w['at'] - first:.3f} s took {w[done]:.0f} us: " +
              ", ".join(f"{name} {us:.0f}" for us, name in steps))


if __name__ == "__main__":
    main()
