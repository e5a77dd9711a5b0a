#!/usr/bin/env python3
"""Measures the cluster-core figures on a local 3-node cluster of release `chorus` processes.

    cargo build --release && python3 bench/experiments/measure.py [--state-mb 10]

1. failover: time from `kill -9` of the leader to the first successful write on a survivor;
2. catch-up: time for a follower whose data directory was wiped to catch up N MB of state;
3. /vote throughput and latency on a follower with 1 and 64 concurrent clients (wrk).

Figures are printed; nothing here asserts a target. Needs `wrk` (apt-get install wrk).
"""
import argparse, json, os, shutil, signal, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import BIN, Cluster, http  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def failover(c, rounds):
    times = []
    for r in range(rounds):
        c.wait_ready()
        leader = c.leader()
        survivor = next(i for i in c.procs if i != leader)
        assert http("POST", c.url(survivor) + "/add_track",
                    {"id": 900000 + r, "title": "before", "artist": "a", "duration": 1})[0] == 200
        c.procs[leader].kill()
        c.procs[leader].wait()
        t0 = time.time()
        n = 0
        while True:
            n += 1
            code, _ = http("POST", c.url(survivor) + f"/vote?id={900000 + r}", timeout=10)
            if code == 200:
                break
        times.append(time.time() - t0)
        print(f"  round {r + 1}: killed leader {leader}; first write on node {survivor} after "
              f"{times[-1] * 1000:.0f} ms ({n} attempts)")
        c.start(leader)
    c.wait_ready()
    return times


def grow_state(c, mb, node):
    lua = os.path.join(HERE, "add_tracks.lua")
    target = mb * 1024 * 1024
    while True:
        code, q = http("GET", c.url(node) + "/queue", timeout=30)
        approx = len(json.dumps(q)) if q else 0
        if approx >= target:
            return approx
        subprocess.run(["wrk", "-t2", "-c32", "-d5s", "-s", lua, c.url(node)], capture_output=True)


def catch_up(c, mb):
    leader = c.leader()
    follower = next(i for i in c.procs if i != leader)
    size = grow_state(c, mb, leader)
    snap = os.path.join(c.dir, f"n{leader}", "snapshots", "current.snap")
    snap_mb = os.path.getsize(snap) / 1048576 if os.path.exists(snap) else 0
    print(f"  state: {size / 1048576:.1f} MB as queue JSON, leader snapshot file {snap_mb:.1f} MB")
    c.procs[follower].send_signal(signal.SIGTERM)
    c.procs[follower].wait()
    shutil.rmtree(os.path.join(c.dir, f"n{follower}"))
    _, st = http("GET", c.url(leader) + "/cluster")
    target = st["commit_index"]
    t0 = time.time()
    c.start(follower)
    while True:
        code, s = http("GET", c.url(follower) + "/cluster")
        if code == 200 and s["applied_index"] is not None and s["applied_index"] >= target:
            break
        time.sleep(0.02)
    took = time.time() - t0
    snap = s["snapshot_index"]
    print(f"  wiped follower {follower} applied index {target} after {took:.2f} s (snapshot index {snap})")
    return took


def vote_bench(c, seconds):
    leader = c.leader()
    follower = next(i for i in c.procs if i != leader)
    http("POST", c.url(leader) + "/add_track", {"id": 1, "title": "bench", "artist": "a", "duration": 1})
    out = {}
    for conns, threads in ((1, 1), (64, 2)):
        r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
                            os.path.join(HERE, "vote.lua"), c.url(follower)],
                           capture_output=True, text=True)
        print(f"  --- {conns} client(s), follower {follower}\n" + r.stdout)
        out[conns] = r.stdout
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-mb", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    c = Cluster()
    try:
        c.wait_ready()
        print("== /vote on a follower (wrk)")
        vote_bench(c, a.seconds)
        print("== kill -9 of the leader -> first successful write on a survivor")
        t = failover(c, a.rounds)
        print(f"  min {min(t) * 1000:.0f} ms, max {max(t) * 1000:.0f} ms")
        print(f"== wiped follower catch-up of {a.state_mb} MB")
        catch_up(c, a.state_mb)
    finally:
        c.stop()


if __name__ == "__main__":
    main()
