#!/usr/bin/env python3
"""Where one replicated write spends its time: the stage timeline of `POST /vote` with one client.

    cargo build --release && python3 bench/write_stages.py [--seconds 5] [--node leader|follower]

Starts a 3-node cluster with the `chorus::stages` trace events on (RUST_LOG), sends writes one
at a time with wrk to the leader (or a follower), then lines the events of all three nodes' logs
up against each write's `write.start` on the receiving node: for every stage on every node, when
it first happened after the write started (median and p90, microseconds). All nodes run on one
machine, so their wall clocks agree.

Stages: write.start/write.done (the node that took the HTTP request), propose/committed (the
leader's openraft client_write), log.append/log.flushed (a node's log append and its fdatasync),
replicate.send/replicate.acked (the leader's AppendEntries to one follower), follower.append/
follower.acked (a follower handling it), apply.start/apply.done (a node's state machine).

Figures are printed; nothing here asserts a target.
"""
import argparse, collections, datetime, os, re, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import wrk  # noqa: E402
from measure import Cluster, http  # noqa: E402

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
    args = ap.parse_args()
    os.environ["RUST_LOG"] = "info,openraft=warn,ractor=warn,ractor_cluster=warn,sled=warn,chorus::stages=trace"
    c = Cluster(3)
    try:
        c.wait_ready()
        leader = c.leader()
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
    offsets = collections.defaultdict(list)
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
                for key, us in seen.items():
                    offsets[key].append(us)
                break
    if not offsets:
        sys.exit("no stage events found in the nodes' logs")
    print(f"{'node':<12} {'stage':<16} {'median us':>10} {'p90 us':>8}  (from write.start on the {entry})")
    writes = max(len(us) for us in offsets.values())
    print(f"{writes} writes")
    rows = sorted(((k, us) for k, us in offsets.items() if len(us) * 2 >= writes),
                  key=lambda kv: statistics.median(kv[1]))
    for (node, stage), us in rows:
        us.sort()
        print(f"{node:<12} {stage:<16} {statistics.median(us):>10.0f} {us[int(len(us) * 0.9)]:>8.0f}")


if __name__ == "__main__":
    main()
