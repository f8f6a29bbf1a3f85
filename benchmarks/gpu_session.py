"""One lease of a GPU machine, planned as three calls: benchmark, train several models at once, score them.

    python3 benchmarks/gpu_session.py start    # data in place, training benchmark alone, runs launched, test suite
    python3 benchmarks/gpu_session.py watch    # progress; the best checkpoints so far copied out
    python3 benchmarks/gpu_session.py finish   # runs waited for, scored on val (no TTA, flip, crops), copied out

Runs on the lent machine from the repository root (PYTHONPATH=.), with FER2013 packed beside the
repository in ``.gpu-data/`` (the lease sends no ../shared). Everything it makes lives under
``$FER_GPU_WORK`` (default /tmp/fer-gpu) and survives between calls while the machine is held;
what should come back is copied to ``$OUT``. The runs are `fer train` itself, several sharing the
GPU, each sized (epochs) to end before the lease does, from the speed measured alone first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("FER_GPU_WORK", "/tmp/fer-gpu"))
DATA, RUNS = WORK / "data", WORK / "runs"
OUT = Path(os.environ.get("OUT", WORK / "out"))
TRAIN_MINUTES = float(os.environ.get("FER_GPU_TRAIN_MINUTES", "21.5"))  # from `start` to the runs' end
FINISH_MINUTES = 24.5  # from `start`: runs still going then are stopped (their best checkpoint stays)
CALL_SECONDS = 560  # each call ends by then (the tool's limit is 600)
ARCH = "vgg:width=64"
BATCH = 128
# Several processes on one GPU fill each other's launch gaps. Measured on an H100 (2026-11-23): vgg
# width 64 at batch 128 takes 2.2 s/epoch alone and 3.5 s/epoch each with four runs at once, a gain
# of 2.5 (the first lease assumed 1.15, so its 145 epochs ended in 9 minutes of a 20-minute window).
SHARING_GAIN = 2.5
EPOCH_OVERHEAD_S = 0.8  # validation, checkpoint and resume state per epoch

# name -> `fer train` options; the four share the GPU. Batch 128 with the learning rate scaled from
# the batch-64 defaults (SGD linearly, AdamW by the square root).
RUNS_PLANNED = {
    "vgg64_sgd_mixup_b128": "--optimizer sgd --lr 0.02 --schedule cosine --mixup 0.2 --seed 21",
    "vgg64_adamw_mixup_b128": "--optimizer adamw --lr 0.0014 --schedule onecycle --mixup 0.2 --seed 22",
    "vgg64_sgd_b128": "--optimizer sgd --lr 0.02 --schedule cosine --seed 23",
    "vgg64_adamw_b128": "--optimizer adamw --lr 0.0014 --schedule onecycle --seed 24",
}


def sh(command: str, log: Path | None = None, check: bool = False) -> str:
    print(f"$ {command}", flush=True)
    result = subprocess.run(command, shell=True, cwd=REPO, text=True, capture_output=True)
    output = result.stdout + result.stderr
    if log:
        log.write_text(output)
    print(output[-4000:], flush=True)
    if check and result.returncode:
        sys.exit(f"failed ({result.returncode}): {command}")
    return output


def elapsed_minutes() -> float:
    return (time.time() - float((WORK / "started").read_text())) / 60


def start() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "started").write_text(str(time.time()))
    RUNS.mkdir(exist_ok=True)
    sh("nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv; nproc; python3 -V")
    sh(f"python3 .gpu-data/fer_pack.py unpack .gpu-data/fer2013.med.xz {DATA}", check=True)
    shared = REPO.parent / "shared" / "data"
    try:  # lets the suite's checks on real weights and val run here too
        shared.mkdir(parents=True, exist_ok=True)
        (shared / "fer2013").symlink_to(DATA)
    except OSError as error:
        print(f"no ../shared/data/fer2013 link ({error})")
    env = "PYTHONPATH=. PYTHONUNBUFFERED=1"
    bench = sh(
        f"{env} python3 benchmarks/training.py --device cuda --data {DATA} --full-epoch "
        f"--arch vgg:width=64 --arch resnet18 --arch vgg:width=32 --batch-size 64 128 256",
        log=WORK / "benchmark-training.txt",
    )
    epoch_alone = _epoch_seconds(bench, BATCH)
    window = TRAIN_MINUTES * 60 - elapsed_minutes() * 60
    per_epoch = len(RUNS_PLANNED) * epoch_alone / SHARING_GAIN + EPOCH_OVERHEAD_S
    epochs = max(60, min(300, int(window / per_epoch)))
    plan = {"epoch_alone_s": epoch_alone, "window_s": window, "estimated_epoch_s": per_epoch, "epochs": epochs}
    print(f"plan: {plan}", flush=True)
    (WORK / "plan.json").write_text(json.dumps(plan))
    for name, options in RUNS_PLANNED.items():
        command = (
            f"{env} setsid nohup python3 -m fer_cli train {DATA}/train --val {DATA}/val --device cuda --workers 4 "
            f"--half --arch vgg --arch-option width=64 --batch-size {BATCH} --epochs {epochs} {options} "
            f"--out {RUNS}/{name}.pt > {RUNS}/{name}.log 2>&1 < /dev/null &"
        )
        subprocess.run(command, shell=True, cwd=REPO)
        print(f"launched {name}: {command}", flush=True)
    subprocess.run(
        f"setsid nohup bash -c 'python3 -m pytest -q -p no:cacheprovider > {WORK}/pytest.log 2>&1; "
        f"echo exit $? >> {WORK}/pytest.log' < /dev/null > /dev/null 2>&1 &",
        shell=True,
        cwd=REPO,
    )
    watch(until=CALL_SECONDS)


def _epoch_seconds(benchmark: str, batch: int) -> float:
    section = benchmark.split(f"batch {batch}\n", 1)[1]
    match = re.search(r"^vgg width=64 .*?epoch\s+([\d.]+) s", section, re.M)
    return float(match.group(1))


def status() -> None:
    print(f"--- {elapsed_minutes():.1f} min since start", flush=True)
    for name in RUNS_PLANNED:
        history = RUNS / f"{name}.history.csv"
        rows = history.read_text().strip().splitlines()[1:] if history.exists() else []
        if rows:
            last = rows[-1].split(",")
            best = max(float(r.split(",")[4]) for r in rows)
            print(f"{name:<26} epoch {last[0]:>4}  val {float(last[4]):.4f}  best {best:.4f}  {last[7]} s/epoch")
        else:
            print(f"{name:<26} (no epoch yet) {_tail(RUNS / f'{name}.log')}")
    print(_tail(WORK / "pytest.log", 3), flush=True)
    sh("nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader")


def _tail(path: Path, lines: int = 1) -> str:
    return "\n".join(path.read_text().strip().splitlines()[-lines:]) if path.exists() else ""


def watch(until: float = CALL_SECONDS) -> None:
    called = time.time()
    while time.time() - called < until - 60:
        status()
        time.sleep(60)
    status()
    for name in RUNS_PLANNED:  # insurance: the best so far, in case the machine goes before `finish`
        if (RUNS / f"{name}.pt").exists():
            shutil.copy(RUNS / f"{name}.pt", OUT / f"{name}.pt")
    _pack_logs()


def _running() -> list[str]:
    out = subprocess.run("pgrep -af 'fer_cli train'", shell=True, text=True, capture_output=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def finish() -> None:
    while _running() and elapsed_minutes() < FINISH_MINUTES:
        status()
        time.sleep(20)
    if _running():
        print("stopping runs still going at the deadline:", _running(), flush=True)
        subprocess.run("pkill -f 'fer_cli train'", shell=True)
        time.sleep(5)
    status()
    models = " ".join(f"-m {RUNS}/{name}.pt" for name in RUNS_PLANNED if (RUNS / f"{name}.pt").exists())
    env = "PYTHONPATH=. PYTHONUNBUFFERED=1"
    for tta in ("none", "flip", "crops"):
        sh(
            f"{env} python3 benchmarks/select_ensemble.py probs {DATA}/val {models} --tta {tta} --device cuda "
            f"--workers 4 -o {WORK}/gpu-{tta}.npz",
            log=WORK / f"probs-{tta}.txt",
        )
    sh(
        f"{env} python3 -m fer_cli ensemble --weighted {DATA}/val {models} --device cuda -f json -o {WORK}/ensemble.json"
    )
    for name in RUNS_PLANNED:
        if (RUNS / f"{name}.pt").exists():
            shutil.copy(RUNS / f"{name}.pt", OUT / f"{name}.pt")
    _pack_logs()


def _pack_logs() -> None:
    with tarfile.open(OUT / "logs.tar.gz", "w:gz") as archive:
        for path in sorted(WORK.glob("*.txt")) + sorted(WORK.glob("*.json")) + sorted(WORK.glob("*.npz")):
            archive.add(path, arcname=path.name)
        for path in [WORK / "pytest.log"] + sorted(RUNS.glob("*.log")) + sorted(RUNS.glob("*.history.csv")):
            if path.exists():
                archive.add(path, arcname=path.name)


if __name__ == "__main__":
    {"start": start, "watch": watch, "finish": finish}[sys.argv[1]]()
