"""How fast `fer` answers on a CPU, before and after a change, measured in one run so that both see the
same machine (a shared machine's speed changes by the hour: compare the two columns, not tables of
different days). Every figure is a whole `fer` process, start-up included, as a user runs it.

    python benchmarks/cpu_speed.py --before 3fafa92           # the working tree against commit 3fafa92
    python benchmarks/cpu_speed.py --before main --quick      # fewer repeats, a 20-invocation loop

What it measures, for each of the two trees (the working tree, and --before checked out by `git
archive` into a temporary folder), alternating between them so that both meet the same load:

* start-up: `fer predict` of one 48x48 face crop (examples/happy.png) and of one photo with one face
  (examples/astronaut.jpg), `fer models`, `fer --help`, `fer --version`: wall time and peak RSS (of the
  largest process), median of --repeat runs;
* a shell loop: `for f in ...; do fer predict "$f"; done` over --loop invocations, as scripts call it;
* photos/s: `fer predict` on a folder of 300 photos of 350x350 composed here (FER2013 val faces, 90-200 px,
  tilted, pasted on crops of the shared photos: no folder of real photos ships with the data), default
  model and `--model fast`, with the faces each finds;
* faces/s: `fer predict` on FER2013 val (3,589 face crops), default model and `--model fast`, with the
  labels of the two trees compared face by face.

Each tree has its own empty cache folder (FER_CACHE_DIR); a first, untimed run fills it (the working
tree exports the default model to ONNX there, once: that first run is reported on its own). Needs
../shared beside the repository. Prints markdown; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from throughput import cpu_name  # a sibling script: benchmarks/ is on sys.path when one runs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VAL = SHARED / "fer2013" / "val"
PHOTOS = SHARED / "photos"
FACE = REPO / "examples" / "happy.png"
PHOTO = REPO / "examples" / "astronaut.jpg"


@dataclass
class Tree:
    name: str
    root: Path
    cache: Path

    def environment(self) -> dict:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("FER_", "OMP_", "PYTHONPATH"))}
        return {**environment, "PYTHONPATH": str(self.root), "FER_CACHE_DIR": str(self.cache), "COLUMNS": "120"}


@dataclass
class Run:
    seconds: float
    peak_mb: float  # the largest process of the run (its main process or a reading worker)
    output: str


TIME = Path("/usr/bin/time")


def fer(tree: Tree, *arguments: str) -> Run:
    """One whole `fer` process of ``tree``, stdout captured (results, or what it printed).

    The peak RSS comes from /usr/bin/time where there is one: a process forked from this one (100 MB of
    Python) inherits its resident size in the kernel's count, /usr/bin/time's children do not."""
    command = [sys.executable, "-m", "fer_cli", *map(str, arguments)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as peak:
        wrapped = [str(TIME), "-f", "%M", "-o", peak.name, *command] if TIME.exists() else command
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, cwd=tree.root, env=tree.environment(), stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"{tree.name}: {' '.join(command)} failed:\n{err.read().decode()}")
        kilobytes = int(Path(peak.name).read_text().split()[-1]) if TIME.exists() else usage.ru_maxrss
        return Run(seconds, kilobytes / 1024, out.read().decode())


def startup(trees: list[Tree], label: str, arguments: list[str], repeat: int) -> None:
    runs = {tree.name: [] for tree in trees}
    for _ in range(repeat):
        for tree in trees:
            runs[tree.name].append(fer(tree, *arguments))
    cells = []
    for tree in trees:
        seconds = statistics.median(run.seconds for run in runs[tree.name])
        peak = statistics.median(run.peak_mb for run in runs[tree.name])
        cells.append(f"{seconds:.2f} s, {peak:,.0f} MB")
    print(f"| {label} | " + " | ".join(cells) + f" | {_ratio(runs, trees)} |", flush=True)


def _ratio(runs: dict, trees: list[Tree]) -> str:
    before, after = (statistics.median(run.seconds for run in runs[tree.name]) for tree in trees)
    return f"{before / after:.1f}x"


def loop(trees: list[Tree], count: int) -> None:
    """``count`` invocations from a shell loop, one face crop each."""
    cells = []
    for tree in trees:
        script = f'for i in $(seq {count}); do "{sys.executable}" -m fer_cli predict "{FACE}" -f jsonl; done'
        started = time.perf_counter()
        done = subprocess.run(["bash", "-c", script], cwd=tree.root, env=tree.environment(), capture_output=True)
        seconds = time.perf_counter() - started
        assert done.stdout.decode().count("\n") == count, done.stderr.decode()[-2000:]
        cells.append((seconds, f"{seconds:.1f} s ({seconds / count:.2f} s each)"))
    print(
        f"| shell loop, {count} x `fer predict face.png` | {cells[0][1]} | {cells[1][1]} | "
        f"{cells[0][0] / cells[1][0]:.1f}x |",
        flush=True,
    )


def throughput(trees: list[Tree], label: str, source: Path, count: int, model: list[str], runs: int, unit: str):
    """Inputs/s over ``source``; returns each tree's rows (of its last run) by path and face."""
    results, cells, seconds_of = {}, [], {}
    timed = {tree.name: [] for tree in trees}
    for _ in range(runs):
        for tree in trees:
            with tempfile.TemporaryDirectory() as scratch:
                run = fer(tree, "predict", source, *model, "-f", "jsonl", "-o", f"{scratch}/out.jsonl")
                rows = [json.loads(line) for line in Path(f"{scratch}/out.jsonl").read_text().splitlines()]
            timed[tree.name].append(run)
            results[tree.name] = {(Path(row["path"]).name, row["face"]): row for row in rows}
    for tree in trees:
        seconds = statistics.median(run.seconds for run in timed[tree.name])
        peak = max(run.peak_mb for run in timed[tree.name])
        faces = sum(1 for row in results[tree.name].values() if row["label"] is not None)
        seconds_of[tree.name] = seconds
        cells.append(f"{count / seconds:,.1f} {unit}/s ({seconds:.1f} s, {peak:,.0f} MB, {faces:,} faces)")
    before, after = (seconds_of[tree.name] for tree in trees)
    print(f"| {label} | " + " | ".join(cells) + f" | {before / after:.1f}x |", flush=True)
    return results


def compare(results: dict, trees: list[Tree], what: str) -> None:
    """How the two trees' answers differ: faces found, labels, boxes, probabilities."""
    before, after = (results[tree.name] for tree in trees)
    common = sorted(set(before) & set(after), key=str)
    labelled = [key for key in common if before[key]["label"] and after[key]["label"]]
    same_label = sum(before[key]["label"] == after[key]["label"] for key in labelled)
    probability = max(
        (abs(before[key]["probabilities"][c] - p) for key in labelled for c, p in after[key]["probabilities"].items()),
        default=0.0,
    )
    box = max((max(abs(a - b) for a, b in zip(before[k]["box"], after[k]["box"])) for k in labelled), default=0)
    print(
        f"  {what}: {len(before):,} rows before, {len(after):,} after; of {len(labelled):,} faces in both, "
        f"{same_label:,} have the same label; largest probability difference {probability:.2g}, "
        f"largest box difference {box} px"
    )


def compose_photos(folder: Path, count: int = 300, side: int = 350, seed: int = 0) -> int:
    """``count`` JPEG photos of ``side`` px: crops of the shared photos without faces (coffee, chelsea), most
    with one FER2013 val face of 90-200 px pasted, tilted up to 20 degrees, some with two, some with none.
    Returns how many faces were pasted."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    faces = sorted(VAL.rglob("*.png"))
    backgrounds = [Image.open(PHOTOS / f"{name}.png").convert("RGB") for name in ("coffee", "chelsea")]
    pasted = 0
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        background = rng.choice(backgrounds)
        crop = rng.randint(250, min(background.size))
        x, y = rng.randint(0, background.width - crop), rng.randint(0, background.height - crop)
        photo = background.crop((x, y, x + crop, y + crop)).resize((side, side), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        how_many = rng.choices([0, 1, 2], weights=[8, 86, 6])[0]
        for k in range(how_many):
            size = rng.randint(90, 200) if how_many == 1 else rng.randint(90, 150)
            face = Image.open(rng.choice(faces)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            face = face.rotate(rng.uniform(-20, 20), Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
            if how_many == 1:
                left = rng.randint(0, side - size)
            else:  # one in each half
                left = rng.randint(k * (side // 2), (k + 1) * side // 2 - size)
            photo.paste(face, (max(0, left), rng.randint(0, side - size)))
            pasted += 1
        photo.save(folder / f"photo_{i:03d}.jpg", quality=90)
    return pasted


def load() -> str:
    return "load average " + ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each start-up measurement (median)")
    parser.add_argument("--loop", type=int, default=100, help="invocations of the shell loop")
    parser.add_argument("--runs", type=int, default=1, help="runs of each throughput measurement (median)")
    parser.add_argument("--quick", action="store_true", help="--repeat 3 --loop 20")
    parser.add_argument("--skip", action="append", default=[], choices=["startup", "loop", "photos", "val"])
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.loop = 3, 20

    scratch = Path(tempfile.mkdtemp(prefix="fer-speed-"))
    try:
        before_root = scratch / "before"
        before_root.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_root)], input=archive, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, capture_output=True, text=True)
        trees = [
            Tree(f"before ({commit.stdout.strip()})", before_root, scratch / "cache-before"),
            Tree("after (working tree)", REPO, scratch / "cache-after"),
        ]
        print(machine())
        print(f"{load()} at the start\n")
        for tree in trees:  # the first run fills each tree's cache: the ONNX export, for the working tree
            first = fer(tree, "predict", FACE, "-f", "jsonl")
            print(f"{tree.name}: first run with an empty cache {first.seconds:.1f} s, {first.peak_mb:,.0f} MB")
        print(f"\n| what | {trees[0].name} | {trees[1].name} | faster |\n|---|---|---|---|")
        if "startup" not in args.skip:
            startup(trees, "`fer predict face.png` (48x48 crop, default model)", ["predict", FACE, "-f", "jsonl"],
                    args.repeat)  # fmt: skip
            fast = ["-m", "fast"]
            startup(trees, "`fer predict face.png -m fast`", ["predict", FACE, *fast, "-f", "jsonl"], args.repeat)
            startup(
                trees, "`fer predict photo.jpg` (512x512, one face)", ["predict", PHOTO, "-f", "jsonl"], args.repeat
            )
            startup(trees, "`fer predict photo.jpg -m fast`", ["predict", PHOTO, *fast, "-f", "jsonl"], args.repeat)
            startup(trees, "`fer models`", ["models"], args.repeat)
            startup(trees, "`fer --help`", ["--help"], args.repeat)
            startup(trees, "`fer --version`", ["--version"], args.repeat)
        if "loop" not in args.skip:
            loop(trees, args.loop)
        if "photos" not in args.skip:
            photos = scratch / "photos"
            pasted = compose_photos(photos)
            found = throughput(trees, f"300 photos 350x350 ({pasted} faces pasted), default model", photos, 300, [],
                               args.runs, "photos")  # fmt: skip
            found_fast = throughput(trees, "300 photos, `-m fast`", photos, 300, ["-m", "fast"], args.runs, "photos")
        if "val" not in args.skip:
            images = sum(1 for _ in VAL.rglob("*.png"))
            labels = throughput(trees, f"FER2013 val ({images:,} face crops), default model", VAL, images, [],
                                args.runs, "images")  # fmt: skip
            labels_fast = throughput(trees, "FER2013 val, `-m fast`", VAL, images, ["-m", "fast"], args.runs, "images")
        print(f"\n{load()} at the end\n")
        if "photos" not in args.skip:
            compare(found, trees, "photos, default model")
            compare(found_fast, trees, "photos, fast")
        if "val" not in args.skip:
            compare(labels, trees, "val, default model")
            compare(labels_fast, trees, "val, fast")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def machine() -> str:
    return f"machine: {cpu_name()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
