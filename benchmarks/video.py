"""How fast `fer predict` reads a video, every frame and with --fps 5, and how much memory it takes.

    python benchmarks/video.py                    # a 10 s 720p 30 fps H.264 clip, the fast model; then 10 minutes
    python benchmarks/video.py --seconds 60 --model vgg32_ferplus --long-minutes 0

The clip is made here (PyAV): examples/astronaut.jpg, zoomed in and out and moved across a 1280x720 background,
one face in every frame. Each `fer predict` is a whole process, start-up included, run as a user runs it (JSONL
to a file). Frames/s are frames read over the whole run's wall time; fer's own rate (after start-up) beside it.
Peak RSS: the main process's (VmHWM from /proc, read just before it ends) and the largest process of the run
(the reading workers included, from wait4). CPU seconds: the run's user + system time, its workers included (on a
machine shared with other jobs, wall time says more about them than about fer). The long clip (--long-minutes) is
the short one played again and again (its packets copied, not encoded again), read with --fps 5: memory must not
grow with the video's length.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE, RATE = (1280, 720), 30


def make_clip(path: Path, seconds: float) -> int:
    """One face moving and zooming across a 720p frame; returns the number of frames."""
    photo = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGB")
    count = round(seconds * RATE)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for i in range(count):
            phase = i / max(1, count - 1)
            # the photo 380-580 px square: her face 66-100 px, above the smallest searched for by default (60 px)
            side = round(480 + 100 * np.sin(2 * np.pi * phase))
            frame = Image.new("RGB", SIZE, (70, 90, 110))
            x = round((SIZE[0] - side) * phase)
            y = round((SIZE[1] - side) * (0.5 + 0.4 * np.sin(4 * np.pi * phase)))
            frame.paste(photo.resize((side, side)), (x, y))
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode(None))
    return count


def repeat_clip(clip: Path, path: Path, times: int) -> None:
    """``clip`` played ``times`` times in a row in one file: its packets copied with their times shifted."""
    with av.open(str(clip)) as source:
        packets = [(p.pts, p.dts, bytes(p), p.is_keyframe) for p in source.demux(video=0) if p.size]
        stream_in = source.streams.video[0]
        length = max(p[0] for p in packets) + stream_in.duration // max(1, stream_in.frames) if stream_in.frames else 0
        with av.open(str(path), "w") as target:
            stream = target.add_stream_from_template(stream_in)
            for time in range(times):
                for pts, dts, data, key in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts = pts + time * length, dts + time * length
                    packet.time_base, packet.stream, packet.is_keyframe = stream_in.time_base, stream, key
                    target.mux(packet)


def decode_only(path: Path) -> float:
    """Seconds to decode every frame to RGB, as fer does, with no face search and no model."""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
    return time.perf_counter() - started


def run_fer(args: list[str], out: Path) -> tuple[float, float, float, str, int, float]:
    """(wall seconds, main process peak MB, largest process peak MB, stderr, records, CPU seconds) of one `fer predict`
    run."""
    command = [sys.executable, "-m", "fer_cli", *args, "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    main_peak = 0.0
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            try:  # VmHWM only grows: the last reading before the end is the main process's peak
                status_text = Path(f"/proc/{process.pid}/status").read_text()
                main_peak = max(main_peak, int(re.search(r"VmHWM:\s+(\d+)", status_text).group(1)) / 1024)
            except (OSError, AttributeError):
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
    # wait4's maximum resident set is the largest of the process and the children it waited for (the workers)
    cpu = usage.ru_utime + usage.ru_stime  # the process and the workers it waited for
    return seconds, main_peak, usage.ru_maxrss / 1024, stderr, sum(1 for _ in out.open()), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the clip (default 10 s)")
    parser.add_argument("--model", default="fast", help="as `fer predict --model` (default: fast)")
    parser.add_argument("--workers", type=int, default=2, help="reading workers, as `fer predict --workers`")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="the long clip, --fps 5 (0: none)")
    args = parser.parse_args()

    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, PyAV {av.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        frames = make_clip(clip, args.seconds)
        print(f"clip: {SIZE[0]}x{SIZE[1]}, {RATE} fps, {frames:,} frames ({args.seconds:g} s), H.264, "
              f"{clip.stat().st_size / 1e6:.1f} MB\n")  # fmt: skip
        seconds = decode_only(clip)
        print("| what | frames read | frames/s (whole run) | x real time | fer's rate after start-up | seconds | "
              "CPU seconds | peak RSS, main process | largest process |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| decode only (PyAV to RGB, no face search, no model) | {frames:,} | {frames / seconds:,.0f} | "
              f"{args.seconds / seconds:.1f} | | {seconds:.1f} | | | |")  # fmt: skip
        runs = [
            (clip, args.seconds, label, extra) for label, extra in (("every frame", []), ("`--fps 5`", ["--fps", "5"]))
        ]
        if args.long_minutes:
            long_clip = Path(folder) / "long.mp4"
            times = max(1, round(args.long_minutes * 60 / args.seconds))
            repeat_clip(clip, long_clip, times)
            minutes = times * args.seconds / 60
            runs.append((long_clip, times * args.seconds, f"{minutes:g} min clip, `--fps 5`", ["--fps", "5"]))
        for path, length, label, extra in runs:
            out = Path(folder) / "out.jsonl"
            command = ["predict", str(path), "--model", args.model, "--workers", str(args.workers), *extra]
            seconds, main_peak, largest, stderr, records, cpu = run_fer(command, out)  # one record a frame: one face
            rate = re.search(r"then ([\d,.]+) frames/s", stderr)
            print(f"| `fer predict --model {args.model}`, {label} | {records:,} | {records / seconds:,.1f} | "
                  f"{length / seconds:.1f} | {rate.group(1) if rate else '?'} | {seconds:.1f} | {cpu:.1f} | "
                  f"{main_peak:,.0f} MB | {largest:,.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
