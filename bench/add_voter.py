#!/usr/bin/env python3
"""Time for a node added to a running 3-node cluster to become a voter, with a library of audio.

    cargo build --release && python3 bench/add_voter.py [--gib 1] [--rounds 2]

Uploads `--gib` of distinct 10 MiB MP3s, then per round starts a new node (next id, empty data
directory), adds it with `POST /cluster/members` and times the call: it answers once the node
has applied the leader's index, audio included, and is a voter. The node is removed again
before the next round. Figures are printed, min–max over the rounds.
"""
import argparse, json, os, tempfile, time, urllib.request

from lib import MIB, Cluster, free_port, http, upload_library


def add_member(c, i, timeout=600):
    h, r = c.nodes[i]
    body = json.dumps({"id": i, "http_addr": f"127.0.0.1:{h}", "raft_addr": f"127.0.0.1:{r}"}).encode()
    req = urllib.request.Request(c.url(1) + "/cluster/members", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Admin-Token": "bench"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"])
    tmp = tempfile.mkdtemp(prefix="chorus-add-voter-")
    try:
        c.wait_ready()
        leader = c.leader()
        files, library = upload_library(c.url(leader), tmp, args.gib)
        print(f"library: {library / MIB:,.0f} MiB in {files} tracks")
        took = []
        for round_ in range(args.rounds):
            i = 4 + round_
            c.nodes[i] = (free_port(), free_port())
            with open(c.config, "a") as f:
                f.write(f'[[nodes]]\nid = {i}\nhttp_addr = "127.0.0.1:{c.nodes[i][0]}"\n'
                        f'raft_addr = "127.0.0.1:{c.nodes[i][1]}"\ndata_dir = "n{i}"\n')
            c.start(i)
            while http("GET", c.url(i) + "/health")[0] != 200:
                time.sleep(0.05)
            started = time.time()
            status, answer = add_member(c, i)
            secs = time.time() - started
            took.append(secs)
            # What the new node holds on disk right when it became a voter (audio included).
            disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(c.dir, f"n{i}"))
                       for f in fs)
            print(f"round {round_ + 1}: node {i} a voter after {secs:.2f} s ({library / MIB / secs:.0f} MiB/s),"
                  f" {disk / MIB:,.0f} MiB on its disk: {status} {answer}")
            req = urllib.request.Request(c.url(1) + f"/cluster/members/{i}", method="DELETE",
                                         headers={"X-Admin-Token": "bench"})
            urllib.request.urlopen(req, timeout=60).read()
            c.procs.pop(i).terminate()
        print(f"added node a voter with {library / MIB:,.0f} MiB: {min(took):.2f}–{max(took):.2f} s")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
