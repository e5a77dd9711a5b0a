#!/usr/bin/env python3
"""Do snapshots hold up writes when the library is large? Uploads N MiB of audio (10 MiB MP3s)
to a fresh 3-node cluster, then runs one-client `POST /vote` on a follower for S seconds while
snapshots are built every 5,000 entries (chorus's default), and prints the latency percentiles
and how many snapshots each node built meanwhile.

    cargo build --release && python3 bench/experiments/snapshot_stall.py [--mib 200] [--seconds 20]

Figures are printed; nothing here asserts a target.
"""
import argparse, glob, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import Cluster, chorus_token, chorus_upload, http, make_mp3, wrk  # noqa: E402


def builds(path):
    return sum("built snapshot" in line for line in open(path, errors="replace"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=200, help="audio to upload first, in 10 MiB tracks")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"])
    try:
        c.wait_ready()
        mp3 = os.path.join(tempfile.mkdtemp(prefix="chorus-stall-"), "song.mp3")
        make_mp3(mp3, 10)
        leader = c.leader()
        token = chorus_token(c.url(leader))
        track = None
        for n in range(max(1, args.mib // 10)):
            track = chorus_upload(c.url(leader), token, mp3, f"track {n}")
        http("POST", c.url(leader) + "/add_track", {"id": int(track)})
        logs = sorted(glob.glob(os.path.join(c.dir, "n*.log")))
        before = [builds(p) for p in logs]
        follower = next(i for i in c.procs if i != leader)
        r = wrk(c.url(follower), 1, args.seconds, method="POST", path=f"/vote?id={track}&up=true")
        during = [builds(p) - b for p, b in zip(logs, before)]
        print(f"{args.mib} MiB of audio; one client for {args.seconds} s on follower {follower}: "
              f"{r['rps']:.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms, "
              f"p999 {r['p999_us'] / 1000:.2f} ms; snapshots built per node meanwhile: {during}")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
