#!/usr/bin/env python3
"""Sustained replicated writes on one cluster: consecutive 64-client wrk runs of POST /vote on a
follower, printing throughput, latency and the follower's RSS after each run. Shows what a
filling dedupe table (100,000 keys) or a growing log does to throughput over time; bench/compare.py
runs each scenario on one cluster too, so its later rounds see the same effect.

    cargo build --release && python3 bench/experiments/sustained_writes.py [--runs 5] [--seconds 10]

Needs `wrk`. Figures are printed; nothing here asserts a target.
"""
import argparse, os, sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import Cluster, http, proc_stat, rss_mib, wrk  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    c = Cluster(3)
    try:
        c.wait_ready()
        leader = c.leader()
        follower = next(i for i in c.procs if i != leader)
        http("POST", c.url(leader) + "/add_track", {"id": 1, "title": "a", "artist": "b", "duration": 100})
        for run in range(1, args.runs + 1):
            r = wrk(c.url(follower), 64, args.seconds, "POST", "/vote?id=1&up=true")
            _, peak = proc_stat(c.procs[follower].pid)
            print(f"run {run}: {r['rps']:,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, "
                  f"p99 {r['p99_us'] / 1000:.2f} ms, follower RSS {rss_mib(c.procs[follower].pid):.0f} MiB "
                  f"(peak {peak:.0f})", flush=True)
        view = http("GET", c.url(leader) + "/cluster")[1] or {}
        print(f"log entries committed: {view.get('commit_index')}, last snapshot at {view.get('snapshot_index')}")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
