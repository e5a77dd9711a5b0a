#!/usr/bin/env python3
"""GET /metrics on a node holding 10,000 tracks: scrape time and size, and what concurrent
scraping does to write latency.

    cargo build --release && python3 bench/metrics_scrape.py [--tracks 10000] [--rounds 5]

The tracks are queued (`POST /add_track`, metadata only). Each round scrapes the leader and a
follower 200 times each, one after another, and times 200 writes on the follower with and
without a scraper hammering that node (alternating); figures are min–max over the rounds.
"""
import argparse, concurrent.futures, statistics, threading, time, urllib.request

from lib import Cluster, http


def scrape(url):
    started = time.perf_counter()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        body = r.read()
    return time.perf_counter() - started, len(body)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def writes(url, n, first_id):
    """`n` votes one after another, each answered without the 10,000-track queue."""
    took = []
    for i in range(n):
        req = urllib.request.Request(url + f"/vote?id={first_id + i % 100}&up=true", method="POST",
                                     headers={"Prefer": "return=minimal"})
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            assert r.status == 200, r.status
        took.append(time.perf_counter() - started)
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    c = Cluster()
    try:
        c.wait_ready()
        leader = c.leader()
        follower = next(i for i in c.nodes if i != leader)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            body = lambda i: {"id": i, "title": f"Title {i}", "artist": "Bench", "duration": 200}
            statuses = list(pool.map(lambda i: http("POST", c.url(leader) + "/add_track", body(i))[0],
                                     range(1, args.tracks + 1)))
        assert statuses.count(200) == args.tracks, "every track queued"
        rows = {"leader p50": [], "leader p99": [], "follower p50": [], "follower p99": [],
                "size": [], "writes p50 quiet": [], "writes p50 scraped": [], "writes p99 quiet": [],
                "writes p99 scraped": []}
        for _ in range(args.rounds):
            for name, node in (("leader", leader), ("follower", follower)):
                samples = [scrape(c.url(node)) for _ in range(200)]
                times = [t for t, _ in samples]
                rows[f"{name} p50"].append(pct(times, 0.5) * 1000)
                rows[f"{name} p99"].append(pct(times, 0.99) * 1000)
                rows["size"].append(samples[-1][1])
            quiet = writes(c.url(follower), 200, 1)
            stop = threading.Event()
            def hammer():
                while not stop.is_set():
                    scrape(c.url(follower))
            scraper = threading.Thread(target=hammer)
            scraper.start()
            scraped = writes(c.url(follower), 200, 1)
            stop.set()
            scraper.join()
            rows["writes p50 quiet"].append(pct(quiet, 0.5) * 1000)
            rows["writes p50 scraped"].append(pct(scraped, 0.5) * 1000)
            rows["writes p99 quiet"].append(pct(quiet, 0.99) * 1000)
            rows["writes p99 scraped"].append(pct(scraped, 0.99) * 1000)
        print(f"{args.tracks} queued tracks, {args.rounds} rounds (min–max over rounds)")
        for name, values in rows.items():
            unit = "bytes" if name == "size" else "ms"
            print(f"  {name:22} {min(values):10.2f} – {max(values):10.2f} {unit}"
                  f"  (median {statistics.median(values):.2f})")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
