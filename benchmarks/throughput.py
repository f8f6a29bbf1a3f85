"""How fast `fer predict` goes, against the limit set by decoding the input, and how much memory it takes.

    python benchmarks/throughput.py                       # FER2013 val: 3,589 PNGs
    python benchmarks/throughput.py --copies 100000       # also 100,000 images (hard links), memory over time
    python benchmarks/throughput.py --engines             # also model-only images/s per engine and precision
    python benchmarks/throughput.py --model m.pt          # also `fer predict --model m.pt` (repeatable)
    python benchmarks/throughput.py --fast-only           # only the fast model's rows (seconds, not minutes)

Every `fer` figure is a whole process, start-up included, run the way a user runs it (results as
JSONL to a file). Peak RSS is the main process's, sampled every 50 ms from /proc (Linux); "largest
process" adds the reading workers (from wait4). Prints markdown tables for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "fer2013" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(VAL), help="a folder of images (default: FER2013 val)")
    parser.add_argument("--workers", type=int, default=2, help="reading workers, as `fer predict --workers`")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the median is shown")
    parser.add_argument("--copies", type=int, default=0, help="also predict this many copies of the images")
    parser.add_argument("--engines", action="store_true", help="also time the models alone, per engine")
    parser.add_argument("--model", action="append", default=[], help="also time `fer predict --model M`; repeatable")
    parser.add_argument("--fast-only", action="store_true", help="only the fast model's rows (skip the slow ones)")
    args = parser.parse_args()

    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    print(machine())
    print(f"\ninput: {args.images} ({len(images):,} images), {args.workers} reading workers\n")
    print("| what | images/s | seconds | peak RSS, main process | largest process | accuracy |")
    print("|---|---|---|---|---|---|")
    seconds = decode_only(images, args.workers)
    print(
        f"| decode only (read, find faces, model pixels; no model) | {len(images) / seconds:,.0f} | {seconds:.2f} "
        "| | | |"
    )
    runs = [
        ("`fer predict --model fast`", ["predict", args.images, "--model", "fast"]),
        ("`fer predict --model fast --tta flip`", ["predict", args.images, "--model", "fast", "--tta", "flip"]),
        ("`fer predict --model fast --tta crops`", ["predict", args.images, "--model", "fast", "--tta", "crops"]),
    ]
    if not args.fast_only:
        runs += [
            ("`fer predict` (default model)", ["predict", args.images]),
            ("`fer ensemble` (every shipped model)", ["ensemble", args.images]),
        ]
    runs += [(f"`fer predict --model {m}`", ["predict", args.images, "--model", m]) for m in args.model]
    for label, command in runs:
        run = median_run([*command, "--workers", str(args.workers)], args.repeat)
        accuracy = f"{run.accuracy:.1%}" if run.accuracy is not None else ""
        print(
            f"| {label} | {len(images) / run.seconds:,.0f} | {run.seconds:.2f} | {run.peak_rss_mb:,.0f} MB "
            f"| {run.largest_mb:,.0f} MB | {accuracy} |"
        )
    if args.copies:
        many(images, args.copies, args.workers)
    if args.engines:
        engines()


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float  # the main process
    largest_mb: float  # the largest process of the run, reading workers included
    rss_over_time: list[tuple[float, float]]  # (seconds since start, main-process RSS in MB)
    accuracy: float | None = None  # label == the image's folder name (FER2013's layout), when it is one


def fer(arguments: list[str]) -> Run:
    """One whole `fer` process, results written as JSONL to a temporary file."""
    fmt = "json" if arguments[0] == "ensemble" else "jsonl"  # a labelled folder is scored: its report is json
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "fer_cli", *arguments, "--format", fmt, "-o", f"{scratch}/out.{fmt}"]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[float, float]] = []
        sampler = threading.Thread(target=sample_rss, args=(process.pid, started, samples), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.join()
        errors = process.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
        accuracy = read_accuracy(Path(f"{scratch}/out.{fmt}"))
    peak = max((rss for _, rss in samples), default=0.0)
    return Run(seconds, peak, usage.ru_maxrss / 1024, samples, accuracy)


def read_accuracy(results: Path) -> float | None:
    """Accuracy against folder names (predict's JSONL), or the mean-probability vote's (ensemble's report)."""
    if results.suffix == ".json":
        report = json.loads(results.read_text())
        votes = {vote["name"]: vote["metrics"]["accuracy"] for vote in report.get("ensembles", [])}
        return votes.get("mean probability")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    labelled = [row for row in rows if row.get("label") and Path(row["path"]).parent.name in row["probabilities"]]
    if not labelled:
        return None
    return sum(row["label"] == Path(row["path"]).parent.name for row in labelled) / len(labelled)


def sample_rss(pid: int, started: float, samples: list) -> None:
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append((time.perf_counter() - started, int(line.split()[1]) / 1024))
        except (OSError, ValueError):
            return
        time.sleep(0.05)


def median_run(arguments: list[str], repeat: int) -> Run:
    runs = sorted((fer(arguments) for _ in range(repeat)), key=lambda run: run.seconds)
    return runs[len(runs) // 2]


def decode_only(images: list[Path], workers: int) -> float:
    """What `fer predict` does before any model runs, in the same worker processes, for the
    default model's preprocessing: the most any model could go at."""
    from fer_cli.engine.predict import _InputReader, read_batches
    from fer_cli.inputs.faces import FaceFinder

    preprocess = {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}
    started = time.perf_counter()
    for _ in read_batches(list(map(str, images)), _InputReader([preprocess], FaceFinder("auto")), 64, workers):
        pass
    return time.perf_counter() - started


def many(images: list[Path], copies: int, workers: int) -> None:
    """Predict ``copies`` images (hard links to the input, cycled) and show memory as the run goes."""
    scratch = Path(tempfile.mkdtemp(prefix="fer-many-"))
    try:
        for i in range(copies):
            source = images[i % len(images)]
            folder = scratch / f"{i // 1000:04d}"
            folder.mkdir(exist_ok=True)
            target = folder / f"{i:07d}{source.suffix}"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        print(f"\n{copies:,} images (copies of the input): main-process RSS as the run goes\n")
        print("| what | images/s | seconds | RSS at 10% | at 50% | at 90% | peak | largest process |")
        print("|---|---|---|---|---|---|---|---|")
        for label, model in (("`fer predict --model fast`", ["--model", "fast"]), ("`fer predict`", [])):
            run = fer(["predict", str(scratch), *model, "--workers", str(workers)])
            at = [rss_at(run, fraction) for fraction in (0.1, 0.5, 0.9)]
            print(
                f"| {label} | {copies / run.seconds:,.0f} | {run.seconds:.0f} | "
                + " | ".join(f"{mb:,.0f} MB" for mb in at)
                + f" | {run.peak_rss_mb:,.0f} MB | {run.largest_mb:,.0f} MB |"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def rss_at(run: Run, fraction: float) -> float:
    moment = run.seconds * fraction
    return min(run.rss_over_time, key=lambda sample: abs(sample[0] - moment))[1]


def engines() -> None:
    """The default model alone on batches of 256 random faces: each engine and precision."""
    import numpy as np
    import torch

    from fer_cli.models.checkpoint import PixelsIn, build_model, read_checkpoint
    from fer_cli.models.zoo import resolve_model

    classifier = resolve_model(None)
    checkpoint = read_checkpoint(classifier.path)
    network = PixelsIn(build_model(checkpoint), checkpoint["preprocess"]).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (256, 1, 48, 48), dtype=np.uint8)
    batch = torch.from_numpy(pixels)
    print(
        f"\nmodel alone ({classifier.name}, {checkpoint['arch']}), batches of 256, {torch.get_num_threads()} threads\n"
    )
    print("| engine | images/s |")
    print("|---|---|")
    with torch.inference_mode():
        print(f"| torch eager, float32 | {rate(lambda: network(batch)):,.0f} |")
        channels_last = network.to(memory_format=torch.channels_last)
        print(f"| torch eager, channels_last | {rate(lambda: channels_last(batch)):,.0f} |")
        network = network.to(memory_format=torch.contiguous_format)
        try:
            compiled = torch.compile(network)
            compiled(batch)
            print(f"| torch.compile (inductor) | {rate(lambda: compiled(batch)):,.0f} |")
        except Exception as error:  # no C++ compiler, unsupported platform...
            print(f"| torch.compile | failed: {str(error).splitlines()[0][:80]} |")
        quantized = torch.ao.quantization.quantize_dynamic(network, {torch.nn.Linear}, dtype=torch.qint8)
        print(f"| torch dynamic int8 (Linear layers only) | {rate(lambda: quantized(batch)):,.0f} |")
    try:
        from fer_cli.models.exported import export_checkpoint, load_exported
    except ImportError:
        print("| onnxruntime | not installed (pip install '.[onnx]') |")
        return
    with tempfile.TemporaryDirectory() as scratch:
        export_checkpoint(classifier.path, f"{scratch}/f.onnx")
        export_checkpoint(classifier.path, f"{scratch}/q.onnx", int8=True, calibration=str(VAL), calibration_size=256)
        for label, name in (("onnxruntime, float32", "f"), ("onnxruntime, int8 (static, per-channel)", "q")):
            runner = load_exported(f"{scratch}/{name}.onnx").runner
            print(f"| {label} | {rate(lambda runner=runner: runner.logits(pixels)):,.0f} |")


def rate(step, seconds: float = 3.0, batch: int = 256) -> float:
    step()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - started)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cpu = cpu_name()
    versions = subprocess.run(
        [sys.executable, "-c", "import torch, importlib.util as u; print(torch.__version__, end=' ');"
         "print(__import__('onnxruntime').__version__ if u.find_spec('onnxruntime') else 'absent')"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return (
        f"machine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {versions[0]}, onnxruntime {versions[1] if len(versions) > 1 else '?'}"
    )


if __name__ == "__main__":
    main()
