"""How `fer serve` holds up: requests/s, latency, errors and the server's memory at several concurrencies.

    python benchmarks/serve.py                            # 2,000 single-face PNGs from FER2013 val, at 1, 8, 64
    python benchmarks/serve.py --requests 500 -c 1 -c 64  # fewer, quicker
    python benchmarks/serve.py --model fast               # another model (passed to fer serve)

Starts a real `fer serve` on 127.0.0.1 (a free port), sends ``--requests`` POST /predict requests of
one image each (cycling through the folder's images, held in memory) from ``-c`` clients at once,
and prints a markdown table: requests/s, p50/p99 latency, errors (any answer but 200), and the
server's resident memory (RSS, from /proc every 50 ms) at the end of each run and at its peak, so
that growth between runs shows. Then an overload: a second server with a small ``--queue`` gets more
concurrent requests than it admits; the 503s' latency is printed and one more request after the
burst shows whether it recovered. The client runs on the same machine: its CPU is the server's too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "fer2013" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(VAL), help="a folder of images (default: FER2013 val)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency (one image each)")
    parser.add_argument("-c", "--concurrency", type=int, action="append", help="clients at once; repeatable")
    parser.add_argument("--model", action="append", default=[], help="passed to fer serve --model; repeatable")
    parser.add_argument("--serve-arg", action="append", default=[], help="another fer serve argument; repeatable")
    parser.add_argument("--overload-queue", type=int, default=8, help="the overload server's --queue (0: skip)")
    args = parser.parse_args()
    levels = args.concurrency or [1, 8, 64]
    paths = sorted(Path(args.images).rglob("*.png"))[: args.requests]
    if not paths:
        sys.exit(f"no PNG images under {args.images}")
    images = [(path.name, path.read_bytes()) for path in paths]
    server_args = [a for m in args.model for a in ("--model", m)] + args.serve_arg

    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    rows = []
    with Server(server_args) as server:
        print(f"fer serve: {server.banner}", flush=True)
        asyncio.run(load(server.url, images, 16, 4))  # warm-up: first batches, allocator, threads
        for concurrency in levels:
            server.peak = server.rss()
            started = time.perf_counter()
            codes, latencies, _ = asyncio.run(load(server.url, images, args.requests, concurrency))
            seconds = time.perf_counter() - started
            rows.append(
                (concurrency, len(codes) / seconds, percentile(latencies, 50), percentile(latencies, 99),
                 sum(code != 200 for code in codes), server.rss(), server.peak, os.getloadavg()[0])
            )  # fmt: skip
            print(f"  concurrency {concurrency}: done in {seconds:.0f}s", file=sys.stderr, flush=True)
        batches = httpx.get(server.url + "/health").json()
    print()
    print("| concurrency | requests/s | p50 latency | p99 latency | errors | server RSS after | peak RSS | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, rate, p50, p99, errors, rss, peak, loadavg in rows:
        print(
            f"| {c} | {rate:.1f} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms | {errors} | {mb(rss)} | {mb(peak)} | {loadavg:.1f} |"
        )
    print(
        f"\n{batches['requests']:,} requests in {batches['batches']:,} model batches "
        f"({batches['requests'] / max(1, batches['batches']):.1f} requests per batch on average)"
    )
    if len(rows) > 1 and rows[0][0] == 1:
        print(f"concurrency {rows[-1][0]} / concurrency 1: {rows[-1][1] / rows[0][1]:.1f}x the requests/s")
    if args.overload_queue:
        overload(images, server_args, args.overload_queue)


def overload(images, server_args, queue: int) -> None:
    """More concurrent requests than the queue admits (clients that retry at once), and beside them
    one probe every 100 ms: how fast a 503 comes, and whether the server recovers after."""
    concurrency = queue * 4
    with Server(server_args + ["--queue", str(queue)]) as server:
        asyncio.run(load(server.url, images, 8, 2))

        async def flood_and_probe():
            flood = asyncio.create_task(load(server.url, images, concurrency * 40, concurrency))
            probes = []
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                await asyncio.sleep(1.0)  # the queue fills
                while not flood.done() and len(probes) < 100:
                    started = time.perf_counter()
                    response = await client.post("/predict", files=[("files", images[0])])
                    probes.append((response.status_code, time.perf_counter() - started))
                    await asyncio.sleep(0.1)
            return await flood, probes

        (codes, _, refused), probes = asyncio.run(flood_and_probe())
        after = httpx.post(server.url + "/predict", files=[("files", images[0])], timeout=60).status_code
    probe_refused = [took for code, took in probes if code == 503]
    print(
        f"\nOverload (--queue {queue}, {concurrency} clients retrying at once, {len(codes)} requests): "
        f"{sum(c == 200 for c in codes)} answered 200, {len(refused)} answered 503 "
        f"(p50 {percentile(refused, 50) * 1000:.0f} ms, p99 {percentile(refused, 99) * 1000:.0f} ms), "
        f"{sum(c not in (200, 503) for c in codes)} other.\n"
        f"Probes during the flood: {len(probes)}, {len(probe_refused)} answered 503 "
        f"(p50 {percentile(probe_refused, 50) * 1000:.0f} ms, p99 {percentile(probe_refused, 99) * 1000:.0f} ms, "
        f"max {max(probe_refused, default=0) * 1000:.0f} ms). A request after the flood: {after}."
    )


async def load(url: str, images: list, total: int, concurrency: int):
    """``total`` requests, ``concurrency`` at a time: (status codes, latencies of the 200s, latencies of the 503s)."""
    codes, latencies, refused = [], [], []
    next_index = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def client_loop():
            for index in next_index:
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", files=[("files", images[index % len(images)])])
                    code = response.status_code
                except httpx.HTTPError:
                    code = 0
                took = time.perf_counter() - started
                codes.append(code)
                (latencies if code == 200 else refused if code == 503 else []).append(took)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return codes, latencies, refused


class Server:
    """`python -m fer_cli serve --port 0` until the block ends; its RSS sampled every 50 ms."""

    def __init__(self, extra: list[str]):
        self.command = [sys.executable, "-m", "fer_cli", "serve", "--port", "0", "--no-access-log", *extra]
        self.peak = 0

    def __enter__(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(self.command, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        for line in self.process.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                break
        else:
            sys.exit("fer serve did not start:\n" + "".join(lines))
        self.banner = next(line.strip() for line in lines if line.startswith("serving "))
        self.url = self.banner.split(" on ")[1].split()[0].rstrip("/")
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        self.sampling = True
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.sampling = False
        self.process.terminate()
        self.process.wait(timeout=60)

    def rss(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))

    def _sample(self) -> None:
        while self.sampling:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.05)


def percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


if __name__ == "__main__":
    main()
