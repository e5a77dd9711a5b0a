#!/usr/bin/env python3
"""Catch-up of a wiped follower on its own (the catch-up scenario of bench/compare.py without
etcd): uploads N distinct 10 MiB MP3s, stops a follower, deletes its data directory, starts it
again and times until it has applied everything the leader had committed.

    cargo build --release && python3 bench/experiments/catch_up.py [--mib 500]

Figures are printed; nothing here asserts a target.
"""
import argparse, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import Cluster, chorus_catch_up, chorus_token, make_mp3  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=500, help="state to catch up, in 10 MiB uploads")
    ap.add_argument("--through-snapshot", action="store_true",
                    help="snapshot every 100 entries, keeping 10: the follower gets a snapshot and fetches the chunks")
    args = ap.parse_args()
    raft = ("snapshot_every = 100", "keep_logs_after_snapshot = 10") if args.through_snapshot else ()
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"], **({"raft": raft} if raft else {}))
    try:
        c.wait_ready()
        mp3 = os.path.join(tempfile.mkdtemp(prefix="chorus-catch-up-"), "song.mp3")
        make_mp3(mp3, 10)
        token = chorus_token(c.url(c.leader()))
        r = chorus_catch_up(c, token, mp3, args.mib)
        print(f"uploads took {r['upload_secs']:.1f} s; catch-up of {args.mib} MiB: {r['secs']:.2f} s, new follower {r['cpu_s']:.1f} CPU s, "
              f"leader {r['leader_cpu_s']:.1f} CPU s meanwhile, "
              f"peak RSS {r['rss_mib']:.0f} MiB")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
