#!/usr/bin/env python3
"""Measures the cluster-core figures on a local 3-node cluster of release `chorus` processes.

    cargo build --release && python3 bench/measure.py [--state-mb 10]

1. failover: time from `kill -9` of the leader to the first successful write on a survivor;
2. catch-up: time for a follower whose data directory was wiped to catch up N MB of state;
3. /vote throughput and latency on a follower with 1 and 64 concurrent clients (wrk).

Figures are printed; nothing here asserts a target. Needs `wrk` (apt-get install wrk).
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CHORUS_BIN") or os.path.join(ROOT, "target", "release", "chorus")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception:
        return None, None


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_during(pid, action, every=0.02):
    """Runs `action`, sampling the process's RSS every `every` s: (result, before, peak) in MiB."""
    before, peak, done = rss_mib(pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(every)
    t = threading.Thread(target=sample)
    t.start()
    try:
        result = action()
    finally:
        done.set()
        t.join()
    return result, before, peak[0]


class Cluster:
    def __init__(self, n=3, extra=(), raft=("snapshot_every = 5000", "keep_logs_after_snapshot = 1000")):
        self.dir = tempfile.mkdtemp(prefix="chorus-bench-")
        self.nodes = {i: (free_port(), free_port()) for i in range(1, n + 1)}
        self.grpc = {i: free_port() for i in self.nodes}
        # CHORUS_RAFT adds `[raft]` lines for an A/B of a setting ("snapshot_every_mib = 0; ...").
        # A key given there replaces the same key of `raft` (TOML refuses a key given twice).
        ab = [line.strip() for line in os.environ.get("CHORUS_RAFT", "").split(";") if line.strip()]
        replaced = {line.split("=")[0].strip() for line in ab}
        raft = [line for line in raft if line.split("=")[0].strip() not in replaced]
        lines = ['cluster_name = "bench"', 'secret = "bench-secret-123"', 'admin_token = "bench"',
                 "[queue]", "allow_anonymous_clear = true", "anonymous_votes = true", "[raft]", *raft, *ab,  # default: chorus's
                 *extra]
        for i, (h, r) in self.nodes.items():
            lines += ["[[nodes]]", f"id = {i}", f'http_addr = "127.0.0.1:{h}"', f'raft_addr = "127.0.0.1:{r}"',
                      f'grpc_addr = "127.0.0.1:{self.grpc[i]}"',
                      f'data_dir = "n{i}"']
        self.config = os.path.join(self.dir, "cluster.toml")
        open(self.config, "w").write("\n".join(lines) + "\n")
        self.procs = {}
        for i in self.nodes:
            self.start(i)

    def url(self, i):
        return f"http://127.0.0.1:{self.nodes[i][0]}"

    def grpc_addr(self, i):
        return f"127.0.0.1:{self.grpc[i]}"

    def start(self, i):
        log = open(os.path.join(self.dir, f"n{i}.log"), "a")
        self.procs[i] = subprocess.Popen([BIN, "start", "--node", str(i), "--config", self.config],
                                         stdout=log, stderr=log)

    def wait_ready(self, ids=None, deadline=60):
        end = time.time() + deadline
        for i in ids or self.nodes:
            while http("GET", self.url(i) + "/ready")[0] != 200:
                if time.time() > end:
                    # The directory goes with stop(); say what the node said first.
                    with open(os.path.join(self.dir, f"n{i}.log"), errors="replace") as f:
                        tail = "".join(f.readlines()[-30:])
                    sys.exit(f"node {i} not ready after {deadline} s; the end of its log:\n{tail}")
                time.sleep(0.05)

    def leader(self):
        """The leader that a majority of nodes names and that calls itself leader."""
        while True:
            views = [http("GET", self.url(i) + "/cluster")[1] for i in self.procs]
            named = [v["leader_id"] for v in views if v]
            for cand in set(named):
                if cand is not None and named.count(cand) * 2 > len(self.procs):
                    v = next((v for v in views if v and v["node_id"] == cand), None)
                    if v and v["state"] == "Leader":
                        return cand
            time.sleep(0.05)

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            p.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


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
    lua = os.path.join(ROOT, "bench", "add_tracks.lua")
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
                            os.path.join(ROOT, "bench", "vote.lua"), c.url(follower)],
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
