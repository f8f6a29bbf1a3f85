"""Ship models: copy checkpoints (.pt) and exported models (.onnx) into weights/, their provenance made portable,
and rewrite weights/SHA256SUMS.

    python tools/ship_weights.py runs/vgg32.pt runs/fast.onnx --place /work/shared=../shared --place /root/runs=runs

Each ``--place OLD=NEW`` rewrites the paths under OLD as NEW in what the file says of itself (data folders, votes files, command
lines, the model a run started from); the file's name in weights/ is its own. A file whose provenance still names an
absolute path is refused, and nothing is written for it: a shipped model carries no build machine's paths
(``tests/test_shipped.py`` checks the shipped files). A model's ``NAME.history.csv`` beside it travels with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from fer_cli.models.portable import absolute_paths, portable

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def ship_checkpoint(source: Path, places: dict[str, str], into: Path) -> list[str]:
    import torch

    from fer_cli.models.checkpoint import save_checkpoint

    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    described = {key: value for key, value in checkpoint.items() if key != "state_dict"}  # all but the weights
    described = portable(described, places)
    left = absolute_paths(described)
    checkpoint.update(described)
    if not left:
        save_checkpoint(into / source.name, checkpoint)  # as stored: float16 weights stay float16
    return left


def ship_exported(source: Path, places: dict[str, str], into: Path) -> list[str]:
    import onnx

    from fer_cli.models.exported import METADATA_KEY

    model = onnx.load(str(source))
    meta = portable(json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY]), places)
    left = absolute_paths(meta)
    if not left:
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
        onnx.save(model, str(into / source.name))
    return left


def write_sums(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".onnx"))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files]
    (folder / "SHA256SUMS").write_text("".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--place", action="append", default=[], metavar="OLD=NEW")
    parser.add_argument("--into", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    places = dict(place.split("=", 1) for place in args.place)
    refused = 0
    for source in args.files:
        ship = ship_exported if source.suffix == ".onnx" else ship_checkpoint
        left = ship(source, places, args.into)
        if left:
            refused += 1
            print(f"{source}: not shipped, its provenance names {', '.join(sorted(set(left)))}", file=sys.stderr)
            continue
        history = source.with_suffix(".history.csv")
        if history.is_file():
            shutil.copyfile(history, args.into / history.name)
        print(f"{source} -> {args.into / source.name}")
    write_sums(args.into)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
