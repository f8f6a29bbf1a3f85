"""How `fer serve` holds up: requests/s, latency, errors and the server's memory at several concurrencies.

    python benchmarks/serve.py                            # 2,000 single-face PNGs from FER2013 val, at 1, 8, 64
    python benchmarks/serve.py --requests 500 -c 1 -c 64  # fewer, quicker
    python benchmarks/serve.py --model fast               # another model (passed to fer serve)
    python benchmarks/serve.py --attack                   # the hostile-client mix instead (issue 24)

Starts a real `fer serve` on 127.0.0.1 (a free port), sends ``--requests`` POST /predict requests of
one image each (cycling through the folder's images, held in memory) from ``-c`` clients at once,
and prints a markdown table: requests/s, p50/p99 latency, errors (any answer but 200), and the
server's resident memory (RSS, from /proc every 50 ms) at the end of each run and at its peak, so
that growth between runs shows. Then an overload: a second server with a small ``--queue`` gets more
concurrent requests than it admits; the 503s' latency is printed and one more request after the
burst shows whether it recovered. The client runs on the same machine: its CPU is the server's too.

``--attack`` runs the hostile-client mix instead, all at once for ``--attack-seconds`` against one
server with its default limits: a 1x60000 PNG with annotate=true, 8 clients posting a 13000x13000
PNG, 100 copies of a collage of faces in one POST, 20 bodies sent at 1 byte/s, 50 headers that never
end; beside them a one-face request after another and GET /health every half second. It prints the
server's RSS (idle, peak, and once it is quiet again), the one-face requests' p50/p99 latency, how
/health fared, what each attack got back, how long the slow clients were held, and how long SIGTERM
takes with an upload stalled. A server whose RSS passes ``--rss-ceiling-gb`` is killed (and the
figures say so): the attacks were once able to take 17 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
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
    parser.add_argument("--attack", action="store_true", help="the hostile-client mix instead of the load runs")
    parser.add_argument("--attack-seconds", type=float, default=60, help="how long the attack mix runs")
    parser.add_argument("--rss-ceiling-gb", type=float, default=8, help="kill the server past this RSS")
    parser.add_argument(
        "--without", action="append", default=[], choices=["thin", "pixels", "faces", "slow"], help="an attack left out"
    )
    args = parser.parse_args()
    levels = args.concurrency or [1, 8, 64]
    paths = sorted(Path(args.images).rglob("*.png"))[: args.requests]
    if not paths:
        sys.exit(f"no PNG images under {args.images}")
    images = [(path.name, path.read_bytes()) for path in paths]
    server_args = [a for m in args.model for a in ("--model", m)] + args.serve_arg
    if args.attack:
        attack_mix(images, server_args, args.attack_seconds, round(args.rss_ceiling_gb * 2**30), set(args.without))
        return

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


# --- the attack mix ------------------------------------------------------------------------------


def attack_mix(images: list, server_args: list[str], seconds: float, ceiling: int, without: set[str]) -> None:
    """Every attack of issue 24 at once, with a one-face request after another and /health beside them."""
    payloads = {
        "one face": images[0],
        "thin": ("thin.png", png_bytes(1, 60000, 1)),
        "pixels": ("big.png", blank_png(13000, 13000)),
        "collage": ("collage.png", collage(images)),
    }
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
        f"attack mix for {seconds:.0f}s{' without ' + ', '.join(sorted(without)) if without else ''}; "
        f"the server is killed past {mb(ceiling)}",
        flush=True,
    )
    with Server(server_args, ceiling=ceiling) as server:
        print(f"fer serve: {server.banner}", flush=True)
        asyncio.run(load(server.url, images, 16, 4))  # warm-up
        idle = server.quiet_rss()
        server.peak = idle
        started = time.monotonic()
        figures = asyncio.run(attacks(server, payloads, seconds, without))
        load_during = os.getloadavg()[0]
        quiet = server.quiet_rss(timeout=180) if server.alive() else 0
        peak = server.peak
        stop_took, stop_code = sigterm_with_a_stalled_upload(server) if server.alive() else (None, None)
    killed = f" (killed {server.killed_at - started:.0f}s into the mix: past the ceiling)" if server.killed_at else ""
    probes = figures["probes"]
    ok = [took for code, took in probes if code == 200]
    waited = [took for _, took in probes]  # one never answered counts the time it waited
    health = figures["health"]
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| server RSS idle / peak / quiet after | {mb(idle)} / {mb(peak)}{killed} / {mb(quiet) if quiet else '-'} |")
    print(
        f"| one-face requests (latency of all, unanswered ones by their wait) | {len(probes)} sent, {len(ok)} answered "
        f"200; p50 {percentile(waited, 50) * 1000:.0f} ms, p99 {percentile(waited, 99) * 1000:.0f} ms, "
        f"max {max(waited, default=0) * 1000:.0f} ms |"
    )
    print(
        f"| GET /health | {sum(code == 200 for code, _ in health)} of {len(health)} answered 200, "
        f"max {max((t for _, t in health), default=0) * 1000:.0f} ms; other answers: "
        f"{summary(code for code, _ in health if code != 200) or 'none'} |"
    )
    for name in ("thin", "pixels", "faces"):
        answers = figures[name]
        print(
            f"| {ATTACKS[name]} | {summary(code for code, _ in answers) or '-'}; "
            f"longest wait {max((t for _, t in answers), default=0):.1f}s |"
        )
    for name in ("slow bodies", "slow headers"):
        held, still = figures[name], figures[name + " held to the end"]
        print(
            f"| {name}: connections the server closed (held at most) / still open at the end (held at most) | "
            f"{len(held)} ({max(held, default=0):.0f}s) / {len(still)} ({max(still, default=0):.0f}s) |"
        )
    if stop_took is None:
        stop = "-"
    elif stop_code is None:
        stop = f"not within {stop_took:.0f}s (killed)"
    else:
        stop = f"{stop_took:.1f}s (exit {stop_code})"
    print(f"| SIGTERM with an upload stalled: the server exits after | {stop} |")
    print(f"| load average at the start of the quiet wait | {load_during:.1f} |")


ATTACKS = {
    "thin": "1x60000 PNG, annotate=true (199 bytes)",
    "pixels": "13000x13000 PNG, 8 clients at once",
    "faces": "100 copies of a face collage in one POST",
}


async def attacks(server, payloads: dict, seconds: float, without: set[str]) -> dict:
    deadline = time.monotonic() + seconds
    names = ("probes", "health", "thin", "pixels", "faces", "slow bodies", "slow headers")
    figures = {name: [] for name in (*names, "slow bodies held to the end", "slow headers held to the end")}
    host, port = server.url.removeprefix("http://").split(":")
    timeout = httpx.Timeout(seconds + 60)

    async def repeat(name: str, files: list, params: dict | None = None, pause: float = 0.0):
        async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as client:
            while time.monotonic() < deadline and server.alive():
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", files=files, params=params)
                    code = response.status_code
                except httpx.HTTPError:
                    code = 0
                except asyncio.CancelledError:  # still waiting when the mix ended
                    figures[name].append((-1, time.perf_counter() - started))
                    raise
                figures[name].append((code, time.perf_counter() - started))
                await asyncio.sleep(pause)

    async def health():
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            while time.monotonic() < deadline and server.alive():
                started = time.perf_counter()
                try:
                    code = (await client.get("/health")).status_code
                except httpx.HTTPError:
                    code = 0
                figures["health"].append((code, time.perf_counter() - started))
                await asyncio.sleep(0.5)

    async def slow(name: str, head: bytes, drip: bytes):
        """A client that sends ``head``, then ``drip`` once a second, reconnecting whenever the server closes."""
        while time.monotonic() < deadline and server.alive():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            opened = time.monotonic()
            try:
                writer.write(head)
                while time.monotonic() < deadline:
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(1024), 1.0)
                        break  # answered (a 408, a 503) or closed: the server is done with it
                    except asyncio.TimeoutError:
                        writer.write(drip)
                else:
                    figures[name + " held to the end"].append(time.monotonic() - opened)
                    continue
                if server.alive():  # not the kill's doing
                    figures[name].append(time.monotonic() - opened)
            except OSError:
                if server.alive():
                    figures[name].append(time.monotonic() - opened)
            except asyncio.CancelledError:
                figures[name + " held to the end"].append(time.monotonic() - opened)
                raise
            finally:
                writer.close()

    post = f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
    body_head = post + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    tasks = [repeat("probes", [("files", payloads["one face"])], pause=0.2), health()]
    if "thin" not in without:
        tasks.append(repeat("thin", [("files", payloads["thin"])], params={"annotate": "true"}))
    if "pixels" not in without:
        tasks.extend(repeat("pixels", [("files", payloads["pixels"])]) for _ in range(8))
    if "faces" not in without:
        tasks.append(repeat("faces", [("files", payloads["collage"])] * 100))
    if "slow" not in without:
        tasks.extend(slow("slow bodies", body_head, b"x") for _ in range(20))
        tasks.extend(slow("slow headers", post, b"X-Slow: 1\r\n") for _ in range(50))
    running = [asyncio.ensure_future(task) for task in tasks]
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    for task in running:
        if not task.done():
            task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return figures


def sigterm_with_a_stalled_upload(server, limit: float = 30.0) -> tuple[float, int | None]:
    """SIGTERM while one upload is stalled mid-body: (seconds until the server exits, its exit code or None)."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as stalled:
        stalled.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 100000\r\n\r\n--b\r\n".encode()
        )
        time.sleep(0.5)  # the server has the headers and is reading the body
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            return limit, None
        return time.monotonic() - started, code


def summary(codes) -> str:
    counts: dict[int, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    named = {0: "no answer", -1: "still waiting at the end"}
    return ", ".join(f"{count} x {named.get(code, code)}" for code, count in sorted(counts.items()))


def png_bytes(width: int, height: int, channels: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG of any size in a few hundred KB, written without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then the row's pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def collage(images: list, columns: int = 6, side: int = 96, gap: int = 24) -> bytes:
    """Faces from the image folder on a white page, ``columns`` x ``columns`` (the detector finds most)."""
    from PIL import Image

    page = Image.new("L", (columns * (side + gap) + gap,) * 2, 255)
    for i in range(columns * columns):
        face = Image.open(io.BytesIO(images[i * 37 % len(images)][1])).convert("L")
        corner = (gap + i % columns * (side + gap), gap + i // columns * (side + gap))
        page.paste(face.resize((side, side), Image.Resampling.BICUBIC), corner)
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    return buffer.getvalue()


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
    """`python -m fer_cli serve --port 0` until the block ends; its RSS sampled every 50 ms, and the
    server killed if it passes ``ceiling`` bytes."""

    def __init__(self, extra: list[str], ceiling: int | None = None):
        self.command = [sys.executable, "-m", "fer_cli", "serve", "--port", "0", "--no-access-log", *extra]
        self.peak = 0
        self.ceiling = ceiling
        self.killed_at: float | None = None

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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        return self.process.poll() is None

    def quiet_rss(self, timeout: float = 60) -> int:
        """The RSS once the server has nothing waiting (or after ``timeout``), two seconds later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            try:
                if httpx.get(self.url + "/health", timeout=5).json()["waiting"] == 0:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        time.sleep(2)
        return self.rss()

    def rss(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        # a process that has just ended (a zombie) has no VmRSS line
        return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)

    def _sample(self) -> None:
        while self.sampling:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if self.ceiling and rss > self.ceiling and self.alive():
                self.process.kill()
                self.killed_at = time.monotonic()
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
