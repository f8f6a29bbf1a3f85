"""Which models to ship: every candidate's probabilities on a labelled folder, then every subset's vote.

    # 1. once per candidate set and TTA mode (on a GPU when there is one): probabilities to a file
    python benchmarks/select_ensemble.py probs ../shared/data/fer2013/val -m a.pt -m b.pt --tta crops -o crops-ab.npz
    # 2. every subset of all the candidates in those files, within a size budget, best vote first
    python benchmarks/select_ensemble.py subsets none-*.npz --budget-mb 48 --top 15

The probabilities come from the same prediction path as `fer ensemble` (``ensemble.predict_labelled``)
and the votes are `fer ensemble`'s own (``ensemble.combine``), so a subset scored here scores the same
there. Files from different runs are joined by image (class folder and file stem), so candidates
can be scored on different machines, on a PNG or a WebP copy of the same folder. Choosing a subset
on the folder it is then reported on is optimistic: the reported figures come from `fer ensemble`.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
from pathlib import Path

import numpy as np

from fer_cli.engine.ensemble import combine, predict_labelled, validation_weights
from fer_cli.models.zoo import resolve_models


def probabilities(args: argparse.Namespace) -> None:
    classifiers = resolve_models(args.model)
    predictions = predict_labelled(classifiers, args.folder, args.device, args.batch_size, args.workers, tta=args.tta)
    names = [c.name for c in classifiers]
    accuracy, per_class, _ = validation_weights(classifiers, classifiers[0].class_names)
    np.savez_compressed(
        args.out,
        probs=predictions.probs.astype(np.float32),
        labels=predictions.labels,
        images=np.array(image_keys(args.folder)),
        names=np.array(names),
        sha256=np.array([sha256(c.path) for c in classifiers]),
        megabytes=np.array([os.path.getsize(c.path) / 1e6 for c in classifiers]),
        accuracy_weights=accuracy,
        per_class_weights=per_class,
        tta=args.tta,
    )
    for m, name in enumerate(names):
        print(f"{name:<28} {(predictions.probs[:, m].argmax(1) == predictions.labels).mean():.4f}")


def image_keys(folder: str) -> list[str]:
    """Each image as 'class/stem', in the order ``predict_labelled`` reads them."""
    from fer_cli.inputs.data import find_labelled_images

    return [f"{Path(p).parent.name}/{Path(p).stem}" for p in find_labelled_images(folder).paths]


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def subsets(args: argparse.Namespace) -> None:
    files = [np.load(path) for path in args.files]
    order = sorted(files[0]["images"].tolist())
    probs, names, sizes, accuracy, per_class = [], [], [], [], []
    labels = None
    for data in files:
        position = {key: i for i, key in enumerate(data["images"].tolist())}
        pick = np.array([position[key] for key in order])
        labels = data["labels"][pick] if labels is None else labels
        if not np.array_equal(labels, data["labels"][pick]):
            raise SystemExit("the files were scored on different labels")
        for m, name in enumerate(data["names"].tolist()):
            if name in names:
                continue
            probs.append(data["probs"][pick, m])
            names.append(name)
            sizes.append(float(data["megabytes"][m]))
            accuracy.append(float(data["accuracy_weights"][m]))
            per_class.append(data["per_class_weights"][m])
    probs = np.stack(probs, axis=1)
    print(f"{len(names)} candidates on {len(labels):,} images (TTA {files[0]['tta']})")
    for m in np.argsort(-(probs.argmax(2) == labels[:, None]).mean(0)):
        print(f"  {names[m]:<28} {(probs[:, m].argmax(1) == labels).mean():.4f}  {sizes[m]:5.1f} MB")
    results = []
    for count in range(2, min(args.max_models, len(names)) + 1):
        for subset in itertools.combinations(range(len(names)), count):
            size = sum(sizes[m] for m in subset)
            if size > args.budget_mb:
                continue
            weights = (np.array(accuracy)[list(subset)], np.array(per_class)[list(subset)])
            for vote, scores in combine(probs[:, subset], weights).items():
                results.append(((scores.argmax(1) == labels).mean(), size, vote, [names[m] for m in subset]))
    results.sort(key=lambda r: (-r[0], r[1]))
    print(f"best votes within {args.budget_mb} MB:")
    for accuracy_, size, vote, members in results[: args.top]:
        print(f"  {accuracy_:.4f}  {size:5.1f} MB  {vote:<28} {' + '.join(members)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    probs = commands.add_parser("probs", help="every model's probabilities on a labelled folder, to a .npz")
    probs.add_argument("folder")
    probs.add_argument("-m", "--model", action="append", required=True)
    probs.add_argument("--tta", default="none", choices=["none", "flip", "crops"])
    probs.add_argument("--device", default="auto")
    probs.add_argument("--batch-size", type=int, default=256)
    probs.add_argument("--workers", type=int, default=2)
    probs.add_argument("-o", "--out", required=True)
    search = commands.add_parser("subsets", help="every subset's votes from .npz files of one TTA mode")
    search.add_argument("files", nargs="+")
    search.add_argument("--budget-mb", type=float, default=48.0, help="total size of the subset's files")
    search.add_argument("--max-models", type=int, default=6)
    search.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    probabilities(args) if args.command == "probs" else subsets(args)


if __name__ == "__main__":
    main()
