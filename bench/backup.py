#!/usr/bin/env python3
"""Backup and restore rates for a library of audio.

    cargo build --release && python3 bench/backup.py [--gib 1] [--rounds 3]

Uploads `--gib` of distinct 10 MiB MP3s to a 3-node cluster, then alternates, per round:
`chorus backup` from a follower (download plus the full check of the file before it is kept;
the follower's RSS sampled every 20 ms),
`chorus restore` of that file into a new 3-node configuration (every node's data directory
written and checked, all three from the same file), and `chorus restore --node 1` alone. The
first restored cluster is started and its library counted. Figures: MiB of archive per second,
min–max over the rounds.
"""
import argparse, os, shutil, subprocess, tempfile, time

from lib import BIN, MIB, Cluster, free_port, http, peak_rss_during, upload_library


def chorus(*args):
    started = time.time()
    out = subprocess.run([BIN, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"chorus {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return time.time() - started, out.stdout.strip()


def new_config(dir_):
    lines = ['cluster_name = "restored"', 'secret = "bench-secret-123"', 'admin_token = "bench"']
    nodes = {}
    for i in (1, 2, 3):
        nodes[i] = (free_port(), free_port())
        lines += ["[[nodes]]", f"id = {i}", f'http_addr = "127.0.0.1:{nodes[i][0]}"',
                  f'raft_addr = "127.0.0.1:{nodes[i][1]}"', f'data_dir = "n{i}"']
    path = os.path.join(dir_, "cluster.toml")
    open(path, "w").write("\n".join(lines) + "\n")
    return path, nodes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    c = Cluster(3, extra=["[tracks]", "max_upload_mb = 64"])
    tmp = tempfile.mkdtemp(prefix="chorus-backup-bench-")
    try:
        c.wait_ready()
        leader = c.leader()
        upload_library(c.url(leader), tmp, args.gib)
        follower = next(i for i in c.nodes if i != leader)
        archive = os.path.join(tmp, "cluster.chorusbackup")
        rates = {"backup": [], "restore 3 nodes": [], "restore 1 node": []}
        for round_ in range(args.rounds):
            (secs, said), before, peak = peak_rss_during(
                c.procs[follower].pid,
                lambda: chorus("backup", "--node", c.url(follower), "-o", archive, "--config", c.config))
            size = os.path.getsize(archive)
            rates["backup"].append(size / MIB / secs)
            print(f"round {round_ + 1}: backup {size / MIB:,.0f} MiB in {secs:.2f} s, serving node RSS"
                  f" {before:.0f} MiB before, {peak:.0f} MiB at most — {said}")
            target = tempfile.mkdtemp(prefix="restore-", dir=tmp)
            config, nodes = new_config(target)
            secs, _ = chorus("restore", "--from", archive, "--config", config)
            rates["restore 3 nodes"].append(3 * size / MIB / secs)
            print(f"round {round_ + 1}: restore to 3 nodes in {secs:.2f} s ({3 * size / MIB / secs:,.0f} MiB/s written)")
            if round_ == 0:
                procs = [subprocess.Popen([BIN, "start", "--node", str(i), "--config", config],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in nodes]
                started = time.time()
                url = f"http://127.0.0.1:{nodes[1][0]}"
                while http("GET", url + "/ready")[0] != 200:
                    time.sleep(0.05)
                ready = time.time() - started
                tracks = http("GET", url + "/tracks?limit=1000")[1]
                print(f"restored cluster ready in {ready:.2f} s, serving {len(tracks)} tracks")
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=30)
            shutil.rmtree(target)
            target = tempfile.mkdtemp(prefix="restore-", dir=tmp)
            config, _ = new_config(target)
            secs, _ = chorus("restore", "--from", archive, "--config", config, "--node", "1")
            rates["restore 1 node"].append(size / MIB / secs)
            print(f"round {round_ + 1}: restore to 1 node in {secs:.2f} s ({size / MIB / secs:,.0f} MiB/s)")
            shutil.rmtree(target)
        for name, r in rates.items():
            print(f"{name}: {min(r):,.0f}–{max(r):,.0f} MiB/s over {len(r)} rounds")
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
