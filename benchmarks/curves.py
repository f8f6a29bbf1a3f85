"""What redrawing NAME.curves.png costs `fer train` per epoch.

    PYTHONPATH=. python benchmarks/curves.py [--epochs 60]

In place (how a CPU run draws): the whole drawing, wall and CPU time of this process. In a helper
process (how a GPU run draws): what the training loop itself spends handing the history over,
with a pause standing in for the epoch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fer_cli.engine.train.curves import CurvesPainter
from fer_cli.outputs import figures


def history(epochs: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1.8 / e**0.5, "val_loss": 1.7 / e**0.4, "train_accuracy": 1 - 0.7 / e**0.5,
         "val_accuracy": 0.72 - 0.4 / e, "lr": 0.01 * (1 - e / (epochs + 1)), "best": e == epochs // 2}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--epoch-seconds", type=float, default=0.5, help="the pause standing in for an epoch")
    args = parser.parse_args()
    rows = history(args.epochs)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.curves.png"
        figures.draw_training_curves(rows[:1], path)  # fonts found, caches warm
        wall, cpu = [], []
        for n in range(1, args.epochs + 1):
            started, started_cpu = time.perf_counter(), time.process_time()
            figures.draw_training_curves(rows[:n], path, "m.pt")
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        print(
            f"in place: median {statistics.median(wall) * 1000:.0f} ms wall, {statistics.median(cpu) * 1000:.0f} ms "
            f"CPU per epoch (max {max(wall) * 1000:.0f} ms), {path.stat().st_size / 1000:.0f} KB at {args.epochs} epochs"
        )
        painter = CurvesPainter(path, "m.pt", background=True)
        handover = []
        for n in range(1, args.epochs + 1):
            time.sleep(args.epoch_seconds)
            started = time.perf_counter()
            painter.update(rows[:n])
            handover.append(time.perf_counter() - started)
        started = time.perf_counter()
        painter.close()
        print(
            f"helper process: median {statistics.median(handover) * 1000:.1f} ms per epoch in the loop "
            f"(max {max(handover) * 1000:.1f} ms); the last drawing waited for at the end: "
            f"{(time.perf_counter() - started) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
