"""Score models on FER2013 val three ways, from one pass over the images each: against the FER+ majority (accuracy,
balanced accuracy, tagger agreement), and against FER2013's own labels; and their votes (mean probability).

    python benchmarks/score_models.py -m weights/resnet18_plus.pt -m weights/fast.onnx [--tta flip] [--ensemble]
    python benchmarks/score_models.py -m a.pt -m b.pt -m c.pt --ensemble --subsets   # every subset's vote too
    python benchmarks/score_models.py -m vgg32_ferplus --sweep   # each model at prior corrections -1 .. 1 too

The images are ../shared/data/fer2013/val (3,589 faces); the FER+ figures use the 3,553 of them FER+ kept (26 mostly
"unknown" or "not a face", 10 unlabelled), the majority ones the 3,396 without a tie at the top. Beside accuracy and
balanced accuracy: the recall on subtle expressions (an emotion the majority, while 3+ of the 10 taggers said neutral:
the neutral pull in one number) and on contempt. Prints a markdown table (what weights/README.md shows) and, with
--json, the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from fer_cli.engine.ensemble import mean_vote, voted_files
from fer_cli.engine.metrics import summarize, summarize_votes
from fer_cli.engine.predict import align_classes, predict_stream
from fer_cli.inputs.data import find_labelled_images
from fer_cli.models.zoo import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", action="append", required=True, help="a model name or file (repeat)")
    parser.add_argument("--root", default=str(SHARED / "fer2013"))
    parser.add_argument("--votes", default=str(SHARED / "ferplus" / "fer2013plus.csv"))
    parser.add_argument("--tta", default="none", choices=["none", "flip", "crops"])
    parser.add_argument("--ensemble", action="store_true", help="also score the mean-probability vote of the models")
    parser.add_argument("--subsets", action="store_true", help="with --ensemble: the vote of every subset of them")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--sweep", action="store_true", help="also each model with its prior correction tau set to -1, -0.9 .. 1"
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    folder = find_labelled_images(Path(args.root) / "val")
    voted = voted_files(args.root, args.votes, "val")
    classifiers = [resolve_model(name) for name in args.model]
    rows, all_probs = [], []
    for classifier in classifiers:
        started = time.perf_counter()
        probs = _probabilities([classifier], folder.paths, args.tta, args.workers)
        seconds = time.perf_counter() - started
        all_probs.append(probs)
        rows.append(_scores(classifier.name, classifier.class_names, probs, folder, voted, seconds))
        if args.sweep:
            for tau in np.round(np.arange(-1.0, 1.01, 0.1), 1):
                label = f"{classifier.name} tau {tau:g}"
                rows.append(
                    _scores(label, classifier.class_names, _with_tau(classifier, probs, tau), folder, voted, None)
                )
    if args.ensemble and len(classifiers) > 1:
        names = align_classes(classifiers)
        aligned = [p[:, [c.class_names.index(n) for n in names]] for p, c in zip(all_probs, classifiers)]
        members = [range(len(classifiers))] if not args.subsets else [
            subset for size in range(2, len(classifiers) + 1) for subset in itertools.combinations(range(len(classifiers)), size)
        ]  # fmt: skip
        for subset in members:
            label = (
                "mean vote"
                if len(subset) == len(classifiers)
                else "vote of " + " + ".join(classifiers[i].name for i in subset)
            )
            vote = mean_vote(np.stack([aligned[i] for i in subset], axis=1))
            rows.append(_scores(label, names, vote, folder, voted, None))
    print("| model | FER+ majority | balanced | subtle recall | contempt recall | tagger agreement | FER2013 labels "
          "| images/s (this pass) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        speed = f"{row['images_per_second']:,.0f}" if row["images_per_second"] else ""
        print(f"| {row['model']} | {row['ferplus_accuracy']:.2%} | {row['balanced_accuracy']:.2%} | "
              f"{row['subtle_recall']:.2%} | {row['per_class_recall'].get('contempt', 0.0):.2%} | "
              f"{row['tagger_agreement']:.2%} | {row['fer2013_accuracy']:.2%} | {speed} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _with_tau(classifier, probs: np.ndarray, tau: float) -> np.ndarray:
    """The probabilities ``classifier`` gives with prior correction ``tau`` instead of its own (same temperature)."""
    if classifier.class_prior is None:
        return probs
    log_prior = np.log(np.clip(np.asarray(classifier.class_prior, dtype=np.float64), 1e-6, None))
    shifted = (
        np.log(np.clip(probs, 1e-30, None)) + (classifier.prior_correction - tau) * log_prior / classifier.temperature
    )
    shifted = np.exp(shifted - shifted.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _probabilities(classifiers, paths: list[str], tta: str, workers: int) -> np.ndarray:
    probs = []
    for outcomes in predict_stream(classifiers, paths, "cpu", 256, workers, faces="none", tta=tta):
        probs += [outcome.faces[0].probs[0] for outcome in outcomes]
    return np.stack(probs)


def _scores(name: str, class_names: list[str], probs: np.ndarray, folder, voted, seconds) -> dict:
    """The figures of one model (or vote) whose probabilities, columns ``class_names``, cover ``folder``'s images."""
    row_of = {path: i for i, path in enumerate(folder.paths)}
    extra = [c for c in voted.files.class_names if c not in class_names]  # contempt, for a FER2013 model
    names = list(class_names) + extra
    padded = np.pad(probs, ((0, 0), (0, len(extra))))
    rows = [row_of[path] for path in voted.files.paths]
    columns = [voted.files.class_names.index(n) if n in voted.files.class_names else None for n in names]
    votes = np.stack([voted.votes[:, c] if c is not None else np.zeros(len(rows)) for c in columns], axis=1)
    majority = np.array([names.index(voted.files.class_names[m]) if m >= 0 else -1 for m in voted.files.labels])
    plus = summarize_votes(votes, majority, padded[rows], names)
    fer2013_truth = np.array([names.index(folder.class_names[label]) for label in folder.labels])
    fer2013 = summarize(fer2013_truth, padded, names)
    return {
        "model": name,
        "ferplus_accuracy": plus["accuracy"],
        "balanced_accuracy": plus["balanced_accuracy"],
        "tagger_agreement": plus["votes"]["tagger_agreement"],
        "subtle_recall": plus["votes"].get("subtle_recall") or 0.0,
        "subtle_images": plus["votes"].get("subtle_images", 0),
        "ferplus_images": plus["count"],
        "per_class_recall": {c: plus["per_class"][c]["recall"] for c in names},
        "fer2013_accuracy": fer2013["accuracy"],
        "fer2013_images": fer2013["count"],
        "images_per_second": len(folder.paths) / seconds if seconds else None,
    }


if __name__ == "__main__":
    main()
