#!/usr/bin/env python3
"""Live updates: how fast a vote reaches `/events` listeners on another node, with many open.

    cargo build --release && python3 bench/events.py [--streams 1000] [--votes 100]

On a local 3-node cluster: `--streams` SSE streams are opened on one follower (plain asyncio
sockets), and headless Chromium (chromedriver, if installed) opens the web app on the same
follower. Then `--votes` votes are sent one at a time to the *other* follower. For each vote the
delay from its HTTP answer to the `change` event's arrival is recorded in every stream and in
the browser (one clock: same machine; the browser's `Date.now()` has 1 ms resolution). The
1,000 streams are read by one Python process, so their figures include its own queueing. Also: the follower's RSS before and after the streams
open (memory per open stream), and the bytes of a first load of the web app. Figures are
printed; nothing here asserts a target.
"""
import argparse, asyncio, json, resource, shutil, subprocess, sys, time, urllib.request

from lib import Cluster, free_port, http, rss_mib


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def page_weight(base):
    """Bytes of a first load: the page, its script and its stylesheet (all it fetches before
    the API calls), as sent (no compression is offered)."""
    total = 0
    for path in ("/", "/app.js", "/app.css"):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            total += len(r.read())
    return total


class Streams:
    """Many `/events` streams on one node; records when each `change` id arrived."""

    def __init__(self, host, port, n):
        self.host, self.port, self.n = host, port, n
        self.arrivals = {}  # id -> list of arrival times (one per stream)
        self.open = 0

    async def one(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(f"GET /events HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"/events answered {status!r}")
        self.open += 1
        event_id, kind = None, None
        while True:
            line = await reader.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"data: ") and kind == b"change":
                self.arrivals.setdefault(event_id, []).append(time.time())

    async def start(self):
        self.tasks = [asyncio.create_task(self.one()) for _ in range(self.n)]
        while self.open < self.n:
            await asyncio.sleep(0.05)


class Chromium:
    """The web app in headless Chromium, driven over the W3C WebDriver protocol."""

    def __init__(self, base):
        self.port = free_port()
        self.proc = subprocess.Popen(["chromedriver", f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except Exception:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}}}}
        self.session = "/session/" + self.call("POST", "/session", caps)["sessionId"]
        self.call("POST", self.session + "/url", {"url": base + "/"})
        # The page's own stream is the app's; this listener records arrival times beside it.
        self.eval("""window.__arrivals = {};
            const es = new EventSource('/events');
            es.addEventListener('change', e => { window.__arrivals[e.lastEventId] = Date.now() / 1000; });
            return true;""")
        while not self.eval("return !!(window.chorus && window.chorus.connected);"):
            time.sleep(0.05)

    def call(self, method, path, body=None):
        data = json.dumps(body if body is not None else {}).encode() if method != "GET" else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def eval(self, script):
        return self.call("POST", self.session + "/execute/sync", {"script": script, "args": []})

    def arrivals(self):
        return {int(k): v for k, v in self.eval("return window.__arrivals;").items()}

    def close(self):
        try:
            self.call("DELETE", self.session)
        finally:
            self.proc.kill()


async def run(args):
    # Each stream is a socket here and on the node.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.streams + 1024)), hard))
    c = Cluster(3)
    try:
        c.wait_ready()
        leader = c.leader()
        watched, voter = [i for i in c.nodes if i != leader][:2]
        base = c.url(watched)
        print(f"leader {leader}; {args.streams} streams and the browser on follower {watched}; "
              f"votes sent to follower {voter}", flush=True)
        print(f"page weight, first load: {page_weight(base):,} bytes (/, /app.js, /app.css)")
        http("POST", c.url(leader) + "/add_track", {"id": 1, "title": "t", "artist": "a", "duration": 60})
        pid = c.procs[watched].pid
        before = rss_mib(pid)
        streams = Streams("127.0.0.1", c.nodes[watched][0], args.streams)
        await streams.start()
        await asyncio.sleep(1)
        after = rss_mib(pid)
        print(f"follower RSS: {before:.1f} MiB with no stream, {after:.1f} MiB with {streams.open} open "
              f"({(after - before) * 1024 / max(streams.open, 1):.1f} KiB per stream)", flush=True)
        browser = Chromium(base) if shutil.which("chromedriver") and shutil.which("chromium") else None
        if browser is None:
            print("no chromedriver/chromium: browser figures skipped")

        answered = {}  # event id (= the vote's log index) -> answer time
        loop = asyncio.get_running_loop()
        for i in range(args.votes):
            t0 = time.time()
            status, body = await loop.run_in_executor(
                None, lambda: http("POST", c.url(voter) + "/vote?id=1&up=true"))
            t1 = time.time()
            if status != 200:
                sys.exit(f"vote {i}: {status}")
            # Votes are one per entry here, so the event whose vote count is body["votes"] is it.
            answered[body["votes"]] = t1
            await asyncio.sleep(0.02)
        await asyncio.sleep(2)

        # Map each change id to its vote by the vote count inside the event: re-read the ids in
        # arrival order (the n-th change after the add is the n-th vote).
        ids = sorted(streams.arrivals)
        vote_ids = ids[-args.votes:]
        delays, worst = [], []
        for n, event_id in enumerate(vote_ids, start=1):
            times = streams.arrivals[event_id]
            d = [(t - answered[n]) * 1000 for t in times]
            delays += d
            worst.append(max(d))
        complete = sum(1 for e in vote_ids if len(streams.arrivals[e]) == streams.open)
        print(f"{streams.open} streams x {args.votes} votes: every stream got every vote for {complete}/{args.votes} votes")
        print("(delays are from the vote's answer at the client; negative: the event came first)")
        print(f"delay from the vote's answer to its event, all streams: p50 {pct(delays, 50):.1f} ms, "
              f"p99 {pct(delays, 99):.1f} ms, max {max(delays):.1f} ms")
        print(f"slowest stream per vote: p50 {pct(worst, 50):.1f} ms, p99 {pct(worst, 99):.1f} ms")
        if browser:
            got = browser.arrivals()
            bd = [(got[e] - answered[n]) * 1000 for n, e in enumerate(vote_ids, start=1) if e in got]
            print(f"browser on follower {watched}: {len(bd)}/{args.votes} votes seen; delay p50 "
                  f"{pct(bd, 50):.1f} ms, p99 {pct(bd, 99):.1f} ms, max {max(bd):.1f} ms")
            browser.close()
        for t in streams.tasks:
            t.cancel()
    finally:
        c.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--votes", type=int, default=100)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
