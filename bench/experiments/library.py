#!/usr/bin/env python3
"""A library that grows: per-node memory and disk as distinct 10 MiB MP3s are uploaded to a
follower of a local 3-node cluster (chorus's own cluster.toml settings), then after a full
restart, on a follower wiped and caught up (with its catch-up rate), and while 16 clients
stream whole tracks.

    cargo build --release && python3 bench/experiments/library.py [--gib 2] [--report-every-mib 500]

Every file is distinct down to each 1 MiB chunk (each carries its file and chunk number inside a
frame's payload), so the chunk store cannot share any of them. Disk is everything under a node's data
directory (log, sled, snapshots, chunks). Figures are printed; nothing here asserts a target.
"""
import argparse, os, shutil, signal, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import (MIB, ROOT, Cluster, chorus_token, chorus_upload, distinct_mp3, http, peak_mib,  # noqa: E402
                 reset_peak, rss_mib)


def disk_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total / MIB


def nodes_line(c, what):
    rss = [rss_mib(c.procs[i].pid) for i in sorted(c.procs)]
    disk = [disk_mib(os.path.join(c.dir, f"n{i}")) for i in sorted(c.procs)]
    chunks = [disk_mib(os.path.join(c.dir, f"n{i}", "chunks")) for i in sorted(c.procs)]
    print(f"{what:<34} RSS MiB {' / '.join(f'{r:.0f}' for r in rss):<16} "
          f"disk MiB {' / '.join(f'{d:,.0f}' for d in disk):<24} (chunks {' / '.join(f'{d:,.0f}' for d in chunks)})",
          flush=True)
    return rss, disk


def snapshot_everywhere(c):
    """Queue-only writes until every node has built a snapshot covering what is applied now."""
    leader = c.leader()
    upto = http("GET", c.url(leader) + "/cluster")[1]["applied_index"]
    n = 0
    while True:
        views = [http("GET", c.url(i) + "/cluster")[1] or {} for i in c.procs]
        if all((v.get("snapshot_index") or -1) >= upto for v in views):
            return
        for _ in range(200):
            n += 1
            http("POST", c.url(leader) + "/add_track",
                 {"id": 5_000_000 + n, "title": f"filler {n}", "artist": "bench", "duration": 60})


def stream(c, node, ids, seconds, clients=16):
    """`clients` threads download whole tracks from `node` for `seconds`; returns MiB/s."""
    stop = time.time() + seconds
    total = [0] * clients

    def worker(k):
        i = k
        while time.time() < stop:
            url = f"{c.url(node)}/play/{ids[i % len(ids)]}"
            with urllib.request.urlopen(url, timeout=60) as r:
                while True:
                    b = r.read(256 * 1024)
                    if not b:
                        break
                    total[k] += len(b)
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(total) / MIB / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="library size to reach")
    ap.add_argument("--file-mib", type=int, default=10)
    ap.add_argument("--report-every-mib", type=int, default=500)
    args = ap.parse_args()
    raft = [line.strip() for line in open(os.path.join(ROOT, "cluster.toml"))
            if line.split("=")[0].strip() in ("snapshot_every", "keep_logs_after_snapshot", "snapshot_every_mib",
                                                "keep_log_mib_after_snapshot", "heartbeat_ms",
                                                "election_timeout_min_ms", "election_timeout_max_ms")]
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"], raft=raft)
    tmp = tempfile.mkdtemp(prefix="chorus-library-")
    try:
        c.wait_ready()
        leader = c.leader()
        follower = min(i for i in c.procs if i != leader)
        token = chorus_token(c.url(leader))
        files = int(args.gib * 1024 // args.file_mib)
        print(f"uploading {files} distinct {args.file_mib} MiB MP3s to follower {follower} (leader {leader})")
        nodes_line(c, "empty")
        ids, library, started = [], 0, time.time()
        for n in range(files):
            path = os.path.join(tmp, "song.mp3")
            library += distinct_mp3(path, args.file_mib, n)
            ids.append(chorus_upload(c.url(follower), token, path, f"track {n}"))
            if (n + 1) * args.file_mib % args.report_every_mib == 0 or n + 1 == files:
                nodes_line(c, f"library {library / MIB:,.0f} MiB")
        secs = time.time() - started
        print(f"uploads: {library / MIB:,.0f} MiB in {secs:.1f} s ({library / MIB / secs:.0f} MiB/s)")
        snapshot_everywhere(c)
        _, disk = nodes_line(c, "after a snapshot everywhere")
        print(f"disk / library: {' / '.join(f'{d / (library / MIB):.3f}' for d in disk)}")

        for p in c.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in c.procs.values():
            p.wait(timeout=60)
        for i in c.nodes:
            c.start(i)
        c.wait_ready(deadline=120)
        nodes_line(c, "after a full restart")

        leader = c.leader()
        follower = min(i for i in c.procs if i != leader)
        target = http("GET", c.url(leader) + "/cluster")[1]["commit_index"]
        c.procs[follower].send_signal(signal.SIGTERM)
        c.procs[follower].wait(timeout=60)
        shutil.rmtree(os.path.join(c.dir, f"n{follower}"))
        start = time.time()
        c.start(follower)
        while ((http("GET", c.url(follower) + "/cluster")[1] or {}).get("applied_index") or 0) < target:
            if time.time() - start > 900:
                sys.exit("the wiped follower did not catch up within 900 s")
            time.sleep(0.05)
        secs = time.time() - start
        print(f"wiped follower {follower} caught up {library / MIB:,.0f} MiB in {secs:.2f} s "
              f"({library / MIB / secs:,.0f} MiB/s)")
        nodes_line(c, "after the wiped follower caught up")
        time.sleep(5)
        nodes_line(c, "5 s later")

        for i in c.procs:
            reset_peak(c.procs[i].pid)
        rate = stream(c, follower, ids, 15)
        peaks = [peak_mib(c.procs[i].pid) for i in sorted(c.procs)]
        print(f"16 clients streaming whole tracks from node {follower} for 15 s: {rate:,.0f} MiB/s; "
              f"peak RSS MiB {' / '.join(f'{p:.0f}' for p in peaks)}")
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
