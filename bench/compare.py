#!/usr/bin/env python3
"""chorus side by side with etcd and nginx, in one run on this machine.

    python3 bench/compare.py [--rounds 3] [--seconds 10] [--state-mib 500] [--only grpc] [--no-write]

Installs what it needs (etcd-server, etcd-client, nginx-light, wrk, curl from Debian, when run as
root), builds chorus in release mode, starts a 3-node chorus cluster and a 3-node etcd cluster on
127.0.0.1 with their data in one temporary directory (same disk), and nginx serving the same MP3
file chorus stores. Each scenario runs against chorus and against its anchor alternately for
`--rounds` rounds (wrk, `--seconds` each); the medians go to bench/RESULTS.md with the machine
and the command, and the latency percentiles to bench/results/latency.svg.

Scenarios: replicated writes (POST /vote vs etcd PUT, on a follower, 1 and 64 clients);
linearizable reads (GET /metadata/{id} vs etcd range, on a follower, 64 clients); the same over
gRPC against etcd's *native* gRPC API, not its HTTP gateway (`VoteTrack` vs `Put` of a 100-byte
value, `GetQueue` vs a linearizable `Range`, on a follower, 1 and 64 clients), both driven by one
closed-loop Rust load client, bench/grpc-load (tonic for chorus, the etcd-client crate for etcd;
one connection per client; built into target/grpc-load; etcd-client's build needs Debian's
protobuf-compiler, chorus's stubs do not). Before the first gRPC row the queue is filled to 10
tracks, so GetQueue answers stay small; the HTTP rows run first, with the one queued track of
earlier runs. Audio streaming (GET /play/{id} of a 10 MiB MP3 vs nginx, 1 and 16 clients, whole
and a 1 MiB range); recovery (a follower with an empty data directory catching up `--state-mib`
MiB of state). `--only grpc` runs just the gRPC rows (case-insensitive substring of the row
names; the catch-up runs only for "catch-up" or no filter); `--no-write` prints the figures and
leaves bench/RESULTS.md and the plot alone (for smoke runs).
Per scenario and system: throughput, p50/p99/p999 latency, CPU seconds of all nodes, peak RSS of
the busiest node, and each node's CPU seconds and peak RSS; the gRPC rows also give the min–max
over the rounds of each system's throughput and p99, and every row the min–max of the per-round
throughput ratio. Every measured run starts with nothing dirty in the page cache (`sync`, not
timed), after every node has applied the setup's upload: what one run or the setup wrote is not
written back inside another's measurement. The catch-up state is distinct 10 MiB MP3s
(`lib.distinct_mp3`), so chorus's chunk store cannot share any of it. Everything it starts is stopped,
also on failure or Ctrl-C.
"""
import argparse, base64, json, os, platform, shutil, signal, subprocess, sys, tempfile, time
from statistics import median

from lib import (ROOT, Cluster, chorus_catch_up, chorus_token, chorus_upload, free_port, http, make_mp3, post,
                 proc_stat, reset_peak, wrk)

TOOLS = {"etcd": "etcd-server", "etcdctl": "etcd-client", "nginx": "nginx-light", "wrk": "wrk",
         "curl": "curl", "protoc": "protobuf-compiler"}
GRPC_LOAD_DIR = os.path.join(ROOT, "bench", "grpc-load")
GRPC_LOAD_TARGET = os.path.join(ROOT, "target", "grpc-load")
GRPC_LOAD = os.path.join(GRPC_LOAD_TARGET, "release", "grpc-load")


# ---- tools and processes ----

def ensure_tools():
    missing = {tool: pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None
               and not os.path.exists(f"/usr/sbin/{tool}")}
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: apt-get install {' '.join(sorted(set(missing.values())))}")
    print(f"installing {', '.join(sorted(set(missing.values())))} ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *sorted(set(missing.values()))], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


class Etcd:
    """A 3-member etcd cluster on loopback."""

    def __init__(self, base, n=3):
        self.base = base
        self.ports = {i: (free_port(), free_port()) for i in range(1, n + 1)}
        self.names = {i: f"e{i}" for i in self.ports}
        self.procs = {}
        for i in self.ports:
            self.start(i, "new")

    def url(self, i):
        return f"http://127.0.0.1:{self.ports[i][0]}"

    def peer(self, i):
        return f"http://127.0.0.1:{self.ports[i][1]}"

    def initial_cluster(self):
        return ",".join(f"{self.names[i]}={self.peer(i)}" for i in self.ports)

    def start(self, i, state):
        log = open(os.path.join(self.base, f"etcd{i}.log"), "a")
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", self.names[i], "--data-dir", os.path.join(self.base, f"etcd{i}"),
             "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
             "--listen-peer-urls", self.peer(i), "--initial-advertise-peer-urls", self.peer(i),
             "--initial-cluster", self.initial_cluster(), "--initial-cluster-state", state,
             "--initial-cluster-token", "chorus-bench", "--max-request-bytes", str(2 * 2**20),
             "--quota-backend-bytes", str(8 * 2**30), "--log-level", "warn"],
            stdout=log, stderr=log)

    def status(self, i):
        try:
            return post(self.url(i) + "/v3/maintenance/status", {}, timeout=2)
        except Exception:
            return None

    def wait_ready(self, deadline=60):
        end = time.time() + deadline
        for i in self.procs:
            while not (self.status(i) or {}).get("leader"):
                if time.time() > end:
                    sys.exit(f"etcd member {i} not ready; logs in {self.base}")
                time.sleep(0.1)

    def follower(self):
        for i in self.procs:
            s = self.status(i) or {}
            if s.get("leader") and s["header"]["member_id"] != s["leader"]:
                return i
        sys.exit("etcd has no follower")

    def leader(self):
        for i in self.procs:
            s = self.status(i) or {}
            if s.get("leader") and s["header"]["member_id"] == s["leader"]:
                return i
        sys.exit("etcd has no leader")

    def pids(self):
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


class Nginx:
    def __init__(self, base, www):
        self.port = free_port()
        self.base = base
        conf = os.path.join(base, "nginx.conf")
        open(conf, "w").write(f"""
daemon off;
worker_processes 2;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log warn;
user root;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {{ audio/mpeg mp3; }}
    server {{ listen 127.0.0.1:{self.port}; root {www}; }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", base], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(base, "nginx.log"), "a"))
        end = time.time() + 20
        while http("GET", self.url() + "/")[0] is None:
            if time.time() > end or self.proc.poll() is not None:
                sys.exit(f"nginx did not start; see {base}/nginx-error.log")
            time.sleep(0.05)

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [self.proc.pid, *map(int, out.split())]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---- measuring ----

def grpc_load(target, endpoint, clients, seconds, track_id=""):
    """One bench/grpc-load run: closed loop, `clients` connections, one JSON line back."""
    cmd = [GRPC_LOAD, "--target", target, "--endpoint", endpoint, "--clients", str(clients),
           "--seconds", str(seconds)]
    if track_id:
        cmd += ["--track-id", str(track_id)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"grpc-load {target} failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["non2xx"] = 0
    return r


def measured(pids, fn):
    """Runs fn() and adds the CPU seconds of `pids` and their highest peak RSS. What earlier
    runs left dirty is written out first (not timed)."""
    os.sync()
    reset_peak(*pids)
    before = [proc_stat(p)[0] for p in pids]
    r = fn()
    after = [proc_stat(p) for p in pids]
    r["per_node"] = [(c - b, m) for b, (c, m) in zip(before, after)]
    r["cpu_s"] = sum(c for c, _ in r["per_node"])
    r["rss_mib"] = max((m for _, m in after), default=0.0)
    return r


QUEUED = 10


def fill_queue(c, node, first_track):
    """Queues plain tracks (no audio) beside `first_track` up to QUEUED, so the gRPC rows see a
    short queue of a known length: GetQueue's answer grows with it (bench/queue_size.py)."""
    for k in range(1, QUEUED):
        code, _ = http("POST", c.url(node) + "/add_track",
                       {"id": 990000 + k, "title": f"bench {k}", "artist": "bench", "duration": 180})
        if code != 200:
            sys.exit(f"queueing bench track {990000 + k} failed: HTTP {code}")
    ids = [str(t["id"]) for t in http("GET", c.url(node) + "/queue")[1] or []]
    if len(ids) != QUEUED or str(first_track) not in ids:
        sys.exit(f"expected {QUEUED} queued tracks including {first_track}, found {ids}")
    settle(c)


def settle(c, deadline=120):
    """Ends the setup: waits until every chorus node has applied what the leader committed (the
    upload's chunk files written), so that the `sync` before each measured run finds them."""
    end = time.time() + deadline
    target = http("GET", c.url(c.leader()) + "/cluster")[1]["commit_index"]
    for i in c.procs:
        while ((http("GET", c.url(i) + "/cluster")[1] or {}).get("applied_index") or 0) < target:
            if time.time() > end:
                sys.exit(f"chorus node {i} did not apply the setup within {deadline} s")
            time.sleep(0.05)


def etcd_catch_up(e, state_mib):
    """Writes state_mib MiB (1 MiB values), replaces a follower by an empty one, times catch-up."""
    leader = e.leader()
    value = b64(os.urandom(2**20 - 1024))
    for n in range(state_mib):
        post(e.url(leader) + "/v3/kv/put", {"key": b64(f"state/{n}"), "value": value}, timeout=60)
    follower = next(i for i in e.procs if i != leader)
    member = e.status(follower)["header"]["member_id"]
    e.procs[follower].send_signal(signal.SIGTERM)
    e.procs[follower].wait(timeout=30)
    ctl = ["etcdctl", "--endpoints", e.url(leader)]
    subprocess.run([*ctl, "member", "remove", format(int(member), "x")], check=True, capture_output=True)
    shutil.rmtree(os.path.join(e.base, f"etcd{follower}"))
    e.names[follower] = f"e{follower}b"
    subprocess.run([*ctl, "member", "add", e.names[follower], f"--peer-urls={e.peer(follower)}"], check=True,
                   capture_output=True)
    target = e.status(leader)["raftIndex"]
    start = time.time()
    e.start(follower, "existing")
    while True:
        s = e.status(follower) or {}
        if int(s.get("raftAppliedIndex", s.get("raftIndex", 0)) or 0) >= int(target):
            break
        if time.time() - start > 900:
            sys.exit("etcd follower did not catch up within 900 s")
        time.sleep(0.05)
    secs = time.time() - start
    cpu, rss = proc_stat(e.procs[follower].pid)
    return {"secs": secs, "cpu_s": cpu, "rss_mib": rss}


# ---- report ----

def fmt_lat(us):
    return f"{us / 1000:.2f} ms" if us < 1e6 else f"{us / 1e6:.2f} s"


KEEP_MARKER = "<!-- compare.py replaces the text above this line and keeps the rest -->"


def spread(results, key, fmt):
    """"min–max" of one figure over the rounds."""
    values = [r[key] for r in results]
    return f"{fmt(min(values))}–{fmt(max(values))}"


def per_node(results):
    """Median CPU seconds and peak RSS of each process over the rounds, in the order measured."""
    n = min(len(r["per_node"]) for r in results)
    return " · ".join(f"{median(r['per_node'][i][0] for r in results):.1f} s / "
                      f"{median(r['per_node'][i][1] for r in results):.0f}" for i in range(n))


def write_results(rows, recovery, args, started):
    lines = ["# chorus side by side: results", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} with "
             f"`python3 bench/compare.py --rounds {args.rounds} --seconds {args.seconds} --state-mib {args.state_mib}"
             f"{' --only ' + repr(args.only) if args.only else ''}` "
             f"on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Linux {platform.release()}; "
             f"3-node clusters on 127.0.0.1, data in one temporary directory. Medians of {args.rounds} "
             "alternating rounds, each after a `sync` (untimed) and once every node applied the setup. Ratio = chorus / anchor for throughput (higher is better for chorus) and "
             "for latency (lower is better for chorus).", "",
             "| scenario | metric | chorus | anchor | ratio |", "|---|---|---|---|---|"]
    for name, unit, c, a in rows:
        key = "mib_s" if unit == "MiB/s" else "rps"
        cm, am = median(r[key] for r in c), median(r[key] for r in a)
        lines.append(f"| {name} | throughput ({unit}) | {cm:,.0f} | {am:,.0f} | {cm / am:.2f} |")
        ratios = [x[key] / y[key] for x, y in zip(c, a) if y[key]]
        if ratios:
            lines.append(f"| | throughput ratio per round, min–max | | | {min(ratios):.2f}–{max(ratios):.2f} |")
        # The gRPC rows (issue 23) also give each system's spread over the rounds; the HTTP rows
        # keep the lines of earlier runs, so old and new tables read alike.
        grpc = name.startswith("gRPC")
        if grpc:
            lines.append(f"| | throughput min–max over rounds | {spread(c, key, lambda v: f'{v:,.0f}')} | "
                         f"{spread(a, key, lambda v: f'{v:,.0f}')} | |")
        for p in ("p50", "p99", "p999"):
            cl, al = median(r[f"{p}_us"] for r in c), median(r[f"{p}_us"] for r in a)
            lines.append(f"| | {p} | {fmt_lat(cl)} | {fmt_lat(al)} | {cl / al:.2f} |")
            if grpc and p == "p99":
                # Ratio column: chorus / anchor p99 of the same round.
                p99s = [x["p99_us"] / y["p99_us"] for x, y in zip(c, a) if y["p99_us"]]
                ratio = f"{min(p99s):.2f}–{max(p99s):.2f}" if p99s else ""
                lines.append(f"| | p99 min–max over rounds | {spread(c, 'p99_us', fmt_lat)} | "
                             f"{spread(a, 'p99_us', fmt_lat)} | {ratio} |")
        cc, ac = median(r["cpu_s"] for r in c), median(r["cpu_s"] for r in a)
        cr, ar = median(r["rss_mib"] for r in c), median(r["rss_mib"] for r in a)
        lines.append(f"| | CPU s (all nodes) | {cc:.1f} | {ac:.1f} | {cc / ac if ac else float('nan'):.2f} |")
        lines.append(f"| | peak RSS, busiest node (MiB) | {cr:.0f} | {ar:.0f} | {cr / ar if ar else float('nan'):.2f} |")
        lines.append(f"| | per node: CPU s / peak RSS MiB (the node taking the requests first; nginx: master, workers) | "
                     f"{per_node(c)} | {per_node(a)} | |")
        errors = sum(r["errors"] + r["non2xx"] for r in c + a)
        if errors:
            lines.append(f"| | errors or non-2xx (all rounds) | {sum(r['errors'] + r['non2xx'] for r in c)} | "
                         f"{sum(r['errors'] + r['non2xx'] for r in a)} | |")
    if recovery:
        c, a = recovery
        lines.append(f"| catch-up of {args.state_mib} MiB, empty follower vs etcd | seconds | {c['secs']:.1f} | "
                     f"{a['secs']:.1f} | {c['secs'] / a['secs']:.2f} |")
        lines.append(f"| | CPU s / peak RSS of the new follower | {c['cpu_s']:.1f} s / {c['rss_mib']:.0f} MiB | "
                     f"{a['cpu_s']:.1f} s / {a['rss_mib']:.0f} MiB | |")
    lines += ["", "Anchors: etcd 3.4 through its HTTP gateway for the HTTP writes, reads and catch-up, and its "
              "native gRPC API (same load client as chorus's gRPC rows) for the gRPC rows; nginx (sendfile) "
              "for streaming. Latency plot: [results/latency.svg](results/latency.svg).", ""]
    # What follows the marker (where chorus stands, the sessions' notes) is written by hand: kept.
    try:
        old = open(args.out).read()
        if KEEP_MARKER in old:
            lines += [KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]]
    except FileNotFoundError:
        pass
    open(args.out, "w").write("\n".join(lines))
    if args.out == os.path.join(ROOT, "bench", "RESULTS.md"):
        write_plot(rows)


def write_plot(rows):
    """Horizontal bars of p50/p99/p999 per scenario, chorus above anchor, log scale."""
    import math
    bar_h, gap, left, width = 9, 16, 330, 560
    lo, hi = 1e2, 1e7  # 0.1 ms .. 10 s
    x = lambda us: left + width * (math.log10(max(lo, min(hi, us))) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    colors = {"p50": "#4c78a8", "p99": "#f58518", "p999": "#e45756"}
    y, parts = 40, []
    for name, _, c, a in rows:
        parts.append(f'<text x="8" y="{y + 12}" font-size="12">{name}</text>')
        for label, runs in (("chorus", c), ("anchor", a)):
            parts.append(f'<text x="{left - 8}" y="{y + 8}" font-size="10" text-anchor="end">{label}</text>')
            for p in ("p999", "p99", "p50"):
                us = median(r[f"{p}_us"] for r in runs)
                parts.append(f'<rect x="{left}" y="{y}" width="{x(us) - left:.1f}" height="{bar_h}" '
                             f'fill="{colors[p]}"><title>{label} {name} {p}: {fmt_lat(us)}</title></rect>')
            y += bar_h + 2
        y += gap
    ticks = "".join(f'<line x1="{x(t)}" y1="30" x2="{x(t)}" y2="{y}" stroke="#ddd"/>'
                    f'<text x="{x(t)}" y="24" font-size="10" text-anchor="middle">{fmt_lat(t)}</text>'
                    for t in (1e2, 1e3, 1e4, 1e5, 1e6, 1e7))
    legend = "".join(f'<rect x="{left + 170 * i}" y="{y}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{left + 14 + 170 * i}" y="{y + 9}" font-size="11">{p}</text>'
                     for i, (p, col) in enumerate(colors.items()))
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{y + 30}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
           f'<text x="8" y="14" font-size="13" font-weight="bold">Latency percentiles (log scale)</text>'
           f'{ticks}{"".join(parts)}{legend}</svg>')
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    open(os.path.join(ROOT, "bench", "results", "latency.svg"), "w").write(svg)


# ---- main ----

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="length of each wrk or grpc-load run")
    ap.add_argument("--state-mib", type=int, default=500, help="state for the catch-up scenario (0 skips it)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/chorus")
    ap.add_argument("--only", default="", help="run only scenarios whose name contains this, case-insensitive "
                    "(e.g. writes, grpc); the catch-up runs only when this is empty or in \"catch-up\"")
    ap.add_argument("--no-write", action="store_true", help="print the figures only: leave --out and the plot alone")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"), help="where to write the table")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    started = time.time()
    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "node"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release"], cwd=GRPC_LOAD_DIR, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=GRPC_LOAD_TARGET))
    work = tempfile.mkdtemp(prefix="chorus-compare-")
    os.chmod(work, 0o755)
    c = e = ng = None
    try:
        c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"])
        e = Etcd(work)
        c.wait_ready()
        e.wait_ready()
        www = os.path.join(work, "www")
        os.makedirs(www)
        mp3 = os.path.join(www, "song.mp3")
        make_mp3(mp3, 10)
        ng = Nginx(work, www)

        leader = c.leader()
        cf = next(i for i in c.procs if i != leader)
        token = chorus_token(c.url(leader))
        track = chorus_upload(c.url(leader), token, mp3, "bench")
        http("POST", c.url(leader) + "/add_track", {"id": int(track)})
        post(e.url(e.leader()) + "/v3/kv/put", {"key": b64("k"), "value": b64("v")})
        ef = e.follower()
        settle(c)
        # The node taking the requests first, so the per-node figures say which is which.
        cpids = lambda: [c.procs[cf].pid] + [p.pid for i, p in c.procs.items() if i != cf]
        epids = lambda: [e.procs[ef].pid] + [p.pid for i, p in e.procs.items() if i != ef and p.poll() is None]
        print(f"chorus follower {cf}, etcd follower {ef}, nginx on {ng.url()}", flush=True)

        put = json.dumps({"key": b64("k"), "value": b64("v")})
        rng = json.dumps({"key": b64("k")})
        etcd_grpc = e.url(ef).removeprefix("http://")
        scenarios = [
            ("replicated writes, 1 client", "req/s",
             lambda: wrk(c.url(cf), 1, args.seconds, "POST", f"/vote?id={track}&up=true"),
             lambda: wrk(e.url(ef), 1, args.seconds, "POST", "/v3/kv/put", put)),
            ("replicated writes, 64 clients", "req/s",
             lambda: wrk(c.url(cf), 64, args.seconds, "POST", f"/vote?id={track}&up=true"),
             lambda: wrk(e.url(ef), 64, args.seconds, "POST", "/v3/kv/put", put)),
            ("linearizable reads, 64 clients", "req/s",
             lambda: wrk(c.url(cf), 64, args.seconds, "GET", f"/metadata/{track}"),
             lambda: wrk(e.url(ef), 64, args.seconds, "POST", "/v3/kv/range", rng)),
            # chorus's gRPC port vs the same etcd client URL (etcd serves gRPC and its HTTP gateway
            # on one port).
            ("gRPC write: VoteTrack vs etcd Put (native gRPC), on a follower, 1 client", "req/s",
             lambda: grpc_load("chorus-vote", c.grpc_addr(cf), 1, args.seconds, track),
             lambda: grpc_load("etcd-put", etcd_grpc, 1, args.seconds)),
            ("gRPC write: VoteTrack vs etcd Put (native gRPC), on a follower, 64 clients", "req/s",
             lambda: grpc_load("chorus-vote", c.grpc_addr(cf), 64, args.seconds, track),
             lambda: grpc_load("etcd-put", etcd_grpc, 64, args.seconds)),
            (f"gRPC linearizable read: GetQueue ({QUEUED} queued tracks) vs etcd Range (native gRPC), "
             "on a follower, 1 client", "req/s",
             lambda: grpc_load("chorus-queue", c.grpc_addr(cf), 1, args.seconds),
             lambda: grpc_load("etcd-range", etcd_grpc, 1, args.seconds)),
            (f"gRPC linearizable read: GetQueue ({QUEUED} queued tracks) vs etcd Range (native gRPC), "
             "on a follower, 64 clients", "req/s",
             lambda: grpc_load("chorus-queue", c.grpc_addr(cf), 64, args.seconds),
             lambda: grpc_load("etcd-range", etcd_grpc, 64, args.seconds)),
            ("streaming 10 MiB, 1 client", "MiB/s",
             lambda: wrk(c.url(cf), 1, args.seconds, "GET", f"/play/{track}"),
             lambda: wrk(ng.url(), 1, args.seconds, "GET", "/song.mp3")),
            ("streaming 10 MiB, 16 clients", "MiB/s",
             lambda: wrk(c.url(cf), 16, args.seconds, "GET", f"/play/{track}"),
             lambda: wrk(ng.url(), 16, args.seconds, "GET", "/song.mp3")),
            ("streaming a 1 MiB range, 16 clients", "MiB/s",
             lambda: wrk(c.url(cf), 16, args.seconds, "GET", f"/play/{track}", range_="bytes=4194304-5242879"),
             lambda: wrk(ng.url(), 16, args.seconds, "GET", "/song.mp3", range_="bytes=4194304-5242879")),
        ]
        rows = []
        queue_filled = False
        for name, unit, run_chorus, run_anchor in scenarios:
            if args.only.lower() not in name.lower():
                continue
            if name.startswith("gRPC") and not queue_filled:
                # After the HTTP rows, which keep measuring with the one queued track.
                fill_queue(c, leader, track)
                queue_filled = True
            cr, ar = [], []
            for rnd in range(args.rounds):
                # Alternate which system goes first, so drift on a noisy machine hits both.
                order = [(cr, cpids(), run_chorus), (ar, epids() if "stream" not in name else ng.pids(), run_anchor)]
                for results, pids, fn in (order if rnd % 2 == 0 else order[::-1]):
                    results.append(measured(pids, fn))
            unit_key = "mib_s" if unit == "MiB/s" else "rps"
            for rnd, (a, b) in enumerate(zip(cr, ar)):
                print(f"  round {rnd + 1}: chorus {a[unit_key]:,.0f} {unit} p99 {a['p99_us'] / 1000:.2f} ms, "
                      f"anchor {b[unit_key]:,.0f} {unit} p99 {b['p99_us'] / 1000:.2f} ms, "
                      f"ratio {a[unit_key] / b[unit_key] if b[unit_key] else float('nan'):.2f}, "
                      f"errors {a['errors'] + a['non2xx']} / {b['errors'] + b['non2xx']}", flush=True)
            print(f"{name}: chorus {median(r[unit_key] for r in cr):,.0f} {unit}, "
                  f"anchor {median(r[unit_key] for r in ar):,.0f} {unit}", flush=True)
            rows.append((name, unit, cr, ar))
        recovery = None
        if args.state_mib > 0 and args.only.lower() in "catch-up":
            recovery = (chorus_catch_up(c, token, mp3, args.state_mib), etcd_catch_up(e, args.state_mib))
            print(f"catch-up of {args.state_mib} MiB: chorus {recovery[0]['secs']:.1f} s, "
                  f"etcd {recovery[1]['secs']:.1f} s", flush=True)
        if args.no_write:
            print("--no-write: results not written")
        else:
            write_results(rows, recovery, args, started)
            print(f"wrote {args.out}")
    finally:
        for system in (ng, e, c):
            if system is not None:
                try:
                    system.stop()
                except Exception as err:  # keep stopping the others
                    print(f"stopping {type(system).__name__}: {err}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
