"""Helpers shared by the bench scripts: the chorus binary and a local cluster of it, HTTP calls,
a user, MP3 files and uploads, wrk runs with bench/request.lua, and a process's CPU time and
memory read from /proc. A helper used by one script stays in that script.

Scripts in bench/ import this directly (their own directory is on sys.path); scripts in
bench/experiments/ put bench/ on sys.path first.
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CHORUS_BIN compares two builds.
BIN = os.environ.get("CHORUS_BIN") or os.path.join(ROOT, "target", "release", "chorus")
FIXTURE = os.path.join(ROOT, "node", "tests", "fixtures", "untagged-2s.mp3")
LUA = os.path.join(ROOT, "bench", "request.lua")
TICK = os.sysconf("SC_CLK_TCK")
MIB = 2**20


# ---- HTTP ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=5):
    """(status, JSON body); (None, None) when the request failed without an HTTP status."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception:
        return None, None


def post(url, body, timeout=30):
    """POSTs JSON and returns the JSON answer; raises on a failure or an error status."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


# ---- a local chorus cluster ----

class Cluster:
    """`n` release chorus nodes on 127.0.0.1, their data and logs in one temporary directory."""

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


# ---- users, MP3s, uploads ----

def chorus_token(base):
    """Registers the bench user through `base` and returns its bearer token."""
    post(base + "/users/register", {"username": "bench", "password": "bench-password", "email": "b@example.com"})
    return post(base + "/users/login", {"username": "bench", "password": "bench-password"})["token"]


def chorus_upload(base, token, path, title):
    """Uploads the MP3 at `path` with curl; returns its track id."""
    out = subprocess.run(["curl", "-s", "-f", "-H", f"Authorization: Bearer {token}",
                          "-F", f'metadata={{"title":"{title}"}};type=application/json',
                          "-F", f"file=@{path};type=audio/mpeg", base + "/tracks/upload"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"upload failed: {out.stdout} {out.stderr}")
    return json.loads(out.stdout)["track_id"]


def make_mp3(path, mib):
    """At least `mib` MiB of MP3 made of the test fixture repeated (MP3 frames concatenate);
    returns its size."""
    block = open(FIXTURE, "rb").read()
    with open(path, "wb") as out:
        for _ in range(-(-mib * MIB // len(block))):
            out.write(block)
    return os.path.getsize(path)


def distinct_mp3(path, mib, n):
    """`mib` MiB of MP3 frames in which every 1 MiB chunk carries (n, chunk index) in the payload
    of a frame past the ones chorus decodes, away from any frame header: file n's chunks are
    its own and the file still demuxes end to end."""
    block = open(FIXTURE, "rb").read()
    data = bytearray(block * -(-mib * MIB // len(block)))
    for i in range(-(-len(data) // MIB)):
        p = i * MIB + 20000
        while 0xFF in data[p - 4:p + 12]:
            p += 1
        # 7 bits a byte: never 0xFF, so no frame sync is made.
        data[p:p + 8] = bytes((n >> (7 * k)) & 0x7F for k in range(4)) + bytes((i >> (7 * k)) & 0x7F for k in range(4))
    with open(path, "wb") as out:
        out.write(data)
    return len(data)


def upload_library(base, tmp, gib):
    """Uploads `gib` GiB of distinct 10 MiB MP3s through `base` as a new user: (tracks, bytes)."""
    token = chorus_token(base)
    files, size = int(gib * 1024 // 10), 0
    for n in range(files):
        path = os.path.join(tmp, "song.mp3")
        size += distinct_mp3(path, 10, n)
        chorus_upload(base, token, path, f"track {n}")
    return files, size


def chorus_catch_up(c, token, mp3, state_mib):
    """Uploads state_mib MiB of distinct 10 MiB tracks (written at `mp3` + ".state"), wipes a
    follower, and times its catch-up."""
    leader = c.leader()
    uploading = time.time()
    for n in range(max(1, state_mib // 10)):
        distinct_mp3(mp3 + ".state", 10, n)
        chorus_upload(c.url(leader), token, mp3 + ".state", f"state {n}")
    upload_secs = time.time() - uploading
    follower = next(i for i in c.procs if i != leader)
    target = http("GET", c.url(leader) + "/cluster")[1]["commit_index"]
    c.procs[follower].send_signal(signal.SIGTERM)
    c.procs[follower].wait(timeout=30)
    shutil.rmtree(os.path.join(c.dir, f"n{follower}"))
    leader_cpu_before = proc_stat(c.procs[leader].pid)[0]
    start = time.time()
    c.start(follower)
    while True:
        view = http("GET", c.url(follower) + "/cluster")[1] or {}
        if (view.get("applied_index") or 0) >= target:
            break
        if time.time() - start > 900:
            sys.exit("chorus follower did not catch up within 900 s")
        time.sleep(0.05)
    secs = time.time() - start
    cpu, rss = proc_stat(c.procs[follower].pid)
    leader_cpu = proc_stat(c.procs[leader].pid)[0] - leader_cpu_before
    return {"secs": secs, "cpu_s": cpu, "rss_mib": rss, "leader_cpu_s": leader_cpu, "upload_secs": upload_secs}


# ---- load ----

def wrk(url, conns, seconds, method="GET", path="/", body="", range_="", prefer=""):
    """One wrk run with bench/request.lua: its RESULT line as a dict, plus req/s and MiB/s."""
    env = dict(os.environ, WRK_METHOD=method, WRK_PATH=path, WRK_BODY=body, WRK_RANGE=range_, WRK_PREFER=prefer)
    threads = min(conns, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", LUA, url], capture_output=True, text=True, env=env).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"wrk gave no result for {url}{path}:\n{out}")
    r = json.loads(line[len("RESULT "):])
    secs = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs
    r["mib_s"] = r["bytes"] / secs / 2**20
    return r


# ---- a process's CPU time and memory ----

def _status_mib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid):
    """Resident memory now (VmRSS), MiB."""
    return _status_mib(pid, "VmRSS")


def peak_mib(pid):
    """The kernel's high-water mark of resident memory (VmHWM) since start or reset_peak, MiB."""
    return _status_mib(pid, "VmHWM")


def reset_peak(*pids):
    """Resets VmHWM to the current RSS; a process that has gone is skipped."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def proc_stat(pid):
    """(cpu seconds, peak RSS MiB) of a process; (0.0, 0.0) if it cannot be read."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        hwm = _status_mib(pid, "VmHWM")
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0
    # A process that has exited but is not yet reaped has no VmHWM.
    return (cpu, hwm) if hwm == hwm else (0.0, 0.0)


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
