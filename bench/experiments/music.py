#!/usr/bin/env python3
"""Measures the music-service figures on a local 3-node cluster of release `chorus` processes.

    cargo build --release && python3 bench/experiments/music.py [--mib 200] [--clients 16]

1. upload: time to upload a `--mib` MiB MP3 (built from the test fixture: MP3 frames
   concatenate) to a follower, and the receiving node's peak resident memory meanwhile;
2. playback: `/play/{id}` throughput with 1 and `--clients` concurrent whole-file downloads from
   one follower, and that node's peak resident memory meanwhile.

Peak memory is the kernel's high-water mark (VmHWM), reset before each phase through
/proc/<pid>/clear_refs. Figures are printed; nothing here asserts a target. Needs `curl`.
"""
import argparse, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import BIN, Cluster, chorus_token, chorus_upload, make_mp3, peak_mib, reset_peak, rss_mib  # noqa: E402


def download(url, n):
    """`n` concurrent whole-file downloads; returns (seconds, total bytes)."""
    start = time.time()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    total = sum(int(p.communicate()[0] or 0) for p in procs)
    return time.time() - start, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=200, help="size of the uploaded MP3 (default 200)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent downloads (default 16)")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release` first")

    c = Cluster(3, extra=["[tracks]", f"max_upload_mb = {args.mib + 16}"])
    work = tempfile.mkdtemp(prefix="chorus-music-bench-")
    try:
        c.wait_ready()
        leader = c.leader()
        receiver, server = [i for i in c.nodes if i != leader][:2]
        mp3 = os.path.join(work, "big.mp3")
        size = make_mp3(mp3, args.mib)
        base = c.url(receiver)
        token = chorus_token(base)
        print(f"cluster: 3 release nodes, leader {leader}; file: {size / 2**20:.1f} MiB MP3")

        pid = c.procs[receiver].pid
        reset_peak(pid)
        idle = rss_mib(pid)
        start = time.time()
        track = chorus_upload(base, token, mp3, "Bench")
        elapsed = time.time() - start
        print(f"upload to follower {receiver}: {elapsed:.1f} s ({size / 2**20 / elapsed:.1f} MiB/s); "
              f"its RSS before {idle:.0f} MiB, peak during {peak_mib(pid):.0f} MiB")

        url = f"{c.url(server)}/play/{track}"
        spid = c.procs[server].pid
        for n in (1, args.clients):
            reset_peak(spid)
            secs, total = download(url, n)
            if total != n * size:
                sys.exit(f"downloads returned {total} bytes, expected {n * size}")
            print(f"/play with {n:2d} client(s) from follower {server}: {total / 2**20 / secs:.0f} MiB/s "
                  f"({n} x {size / 2**20:.0f} MiB in {secs:.1f} s); peak RSS {peak_mib(spid):.0f} MiB")
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
