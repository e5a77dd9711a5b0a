#!/usr/bin/env python3
"""One node under far more clients than it can serve: admission on (`[http] max_in_flight`,
chorus's default or `--limit`) against admission off (a limit no load reaches).

    cargo build --release && python3 bench/overload.py [--clients 2000] [--seconds 10] [--rounds 2] [--limit N]

A 3-node cluster per configuration, rounds alternating between them. Each round, `--clients`
asyncio clients, each on its own keep-alive connection, vote (`POST /vote`, `Prefer:
return=minimal`) on the leader in a tight loop for `--seconds`. Per round: votes admitted per
second and their p50/p99 latency, 503s per second and how long after the start the first came,
other failures, the leader's peak RSS (sampled every 50 ms), and a single vote's latency one
second after the load stops. The load generator shares the 2 CPUs with the nodes.
"""
import argparse, asyncio, time

from lib import Cluster, http, peak_rss_during

VOTE = (b"POST /vote?id=1&up=true HTTP/1.1\r\nHost: bench\r\nPrefer: return=minimal\r\n"
        b"Content-Length: 0\r\n\r\n")


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    close = b"connection: close" in head.lower()
    return status, close


async def client(port, until, results, started):
    reader = writer = None
    while time.monotonic() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t = time.monotonic()
            writer.write(VOTE)
            status, close = await read_response(reader)
            results.append((t - started, time.monotonic() - t, status))
            if status == 503:
                await asyncio.sleep(0.05)  # as a client honouring Retry-After would back off
            if close:
                writer.close()
                writer = None
        except Exception:
            results.append((time.monotonic() - started, 0.0, None))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


def one_round(c, leader, clients, seconds):
    port = c.nodes[leader][0]
    results = []
    started = time.monotonic()

    async def run():
        until = started + seconds
        await asyncio.gather(*(client(port, until, results, started) for _ in range(clients)))
    _, _, peak = peak_rss_during(c.procs[leader].pid, lambda: asyncio.run(run()), every=0.05)
    time.sleep(1)
    t = time.monotonic()
    after = http("POST", c.url(leader) + "/vote?id=1&up=true")[0]
    after_ms = (time.monotonic() - t) * 1e3
    ok = sorted(lat for _, lat, s in results if s == 200)
    shed = [at for at, _, s in results if s == 503]
    other = sum(1 for _, _, s in results if s not in (200, 503))
    q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] * 1e3 if ok else float("nan")
    return {"ok/s": len(ok) / seconds, "p50 ms": q(0.5), "p99 ms": q(0.99), "503/s": len(shed) / seconds,
            "first 503 s": min(shed) if shed else float("nan"), "errors": other, "peak RSS MiB": peak,
            "after": f"{after} in {after_ms:.1f} ms"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="max_in_flight (default: chorus's own)")
    args = ap.parse_args()
    admission = ["[http]", f"max_in_flight = {args.limit}"] if args.limit else []
    configs = {f"admission {args.limit or 'default'}": admission,
               "no admission": ["[http]", "max_in_flight = 1000000"]}
    rows = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, extra in configs.items():
            c = Cluster(3, extra=extra)
            try:
                c.wait_ready()
                leader = c.leader()
                http("POST", c.url(leader) + "/add_track", {"id": 1, "title": "t", "artist": "a", "duration": 60})
                r = one_round(c, leader, args.clients, args.seconds)
                rows[name].append(r)
                print(f"round {round_ + 1} {name}: " + ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
            finally:
                c.stop()
    print(f"\n{args.clients} clients, {args.seconds:.0f} s per round, min–max over {args.rounds} rounds:")
    for name, rs in rows.items():
        cells = []
        for key in ("ok/s", "p50 ms", "p99 ms", "503/s", "first 503 s", "peak RSS MiB"):
            vals = [r[key] for r in rs]
            cells.append(f"{key} {min(vals):,.1f}–{max(vals):,.1f}")
        print(f"  {name}: " + "; ".join(cells) + f"; errors {sum(r['errors'] for r in rs)}")


if __name__ == "__main__":
    main()
