#!/usr/bin/env python3
"""What a vote and a queue read cost as the queue grows, with and without `Prefer: return=minimal`.

    cargo build --release && python3 bench/queue_size.py [--sizes 10,5000,20000] [--rounds 5] [--seconds 5]

Starts a 3-node cluster of release `chorus` processes, fills the queue to each size in turn and,
at each size, runs one wrk client against a follower for `--seconds`, alternating for `--rounds`
rounds: `POST /vote` answered with the whole queue (the seed's shape), the same vote with
`Prefer: return=minimal` (`{"id","votes"}` only), `GET /queue` (all of it) and
`GET /queue?limit=50`. Prints per size and request the mean latency, p99 and bytes per answer as
medians with their min–max over the rounds, and the ratio of a minimal vote's mean latency at the
largest size to the smallest, per round (min–max). Needs `wrk` (apt-get install wrk).
"""
import argparse, http.client, json, sys, threading
from statistics import median

from lib import Cluster, wrk

REQUESTS = {
    "vote, whole queue": dict(method="POST", path="/vote?id=1&up=true"),
    "vote, return=minimal": dict(method="POST", path="/vote?id=1&up=true", prefer="return=minimal"),
    "GET /queue": dict(method="GET", path="/queue"),
    "GET /queue?limit=50": dict(method="GET", path="/queue?limit=50"),
}


def one_client(url, seconds, request):
    """One wrk client for `seconds`; adds the mean latency and the answer's size."""
    r = wrk(url, 1, seconds, **request)
    if r["errors"] or r["non2xx"] or not r["requests"]:
        sys.exit(f"wrk saw errors: {r}")
    r["mean_ms"] = r["duration_us"] / r["requests"] / 1000
    r["kb"] = r["bytes"] / r["requests"] / 1000
    return r


def fill(addr, first, last, threads=16):
    """Queues tracks first..last-1 over keep-alive connections, minimal answers."""
    ids = iter(range(first, last))
    lock = threading.Lock()
    host, port = addr.split(":")

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            with lock:
                i = next(ids, None)
            if i is None:
                return
            body = json.dumps({"id": i, "title": f"track {i}", "artist": "bench", "duration": 180})
            conn.request("POST", "/add_track", body, {"Content-Type": "application/json",
                                                      "Prefer": "return=minimal",
                                                      "Idempotency-Key": f"fill-{i}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                sys.exit(f"add_track {i}: {resp.status}")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def spread(values, fmt="{:.2f}"):
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,5000,20000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    c = Cluster()
    try:
        c.wait_ready()
        leader = c.leader()
        follower = next(i for i in c.procs if i != leader)
        url = c.url(follower)
        print(f"follower {follower} ({url}); {args.rounds} rounds of {args.seconds} s per request and size",
              flush=True)
        results = {}
        queued = 1
        for size in sizes:
            fill(url.removeprefix("http://"), queued, size + 1)
            queued = size + 1
            runs = {name: [] for name in REQUESTS}
            for _ in range(args.rounds):
                for name, request in REQUESTS.items():
                    runs[name].append(one_client(url, args.seconds, request))
            results[size] = runs
            for name, rs in runs.items():
                print(f"  {size:>6} queued  {name:<22} mean {spread([r['mean_ms'] for r in rs])} ms  "
                      f"p99 {spread([r['p99_us'] / 1000 for r in rs])} ms  "
                      f"{spread([r['kb'] for r in rs], '{:.1f}')} KB", flush=True)
        small, large = sizes[0], sizes[-1]
        for name in ("vote, return=minimal", "vote, whole queue"):
            ratios = [b["mean_ms"] / a["mean_ms"] for a, b in zip(results[small][name], results[large][name])]
            print(f"{name}: mean latency at {large} / at {small} queued, per round: {spread(ratios)}")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
