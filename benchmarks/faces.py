"""Face detection figures: time per photo, faces found in a group photo, and whether detected,
aligned crops are seen like the training crops (accuracy of the default model on FER2013 val
faces pasted, enlarged and tilted, into photos, against the original crops).

    python benchmarks/faces.py              # the figures quoted in README.md
    python benchmarks/faces.py --template   # re-measure faces.FER2013_LANDMARKS on training faces

Needs ../shared beside the repository. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fer_cli.inputs.data import find_labelled_images
from fer_cli.inputs.faces import FaceFinder
from fer_cli.inputs.images import model_pixels, read_image
from fer_cli.models.classifier import Classifier
from fer_cli.models.zoo import resolve_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = SHARED / "photos"
GROUP = ["happy/fer28713.png", "surprise/fer28755.png", "angry/fer28716.png", "neutral/fer28723.png"]


def timed(function, repeats: int = 5) -> tuple[float, object]:
    function()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def detection_times(finder: FaceFinder) -> None:
    print(f"Detection time per photo (median of 5, 1 thread, onnxruntime on the {finder.detector.device}):")
    for path in sorted(PHOTOS.glob("*.png")):
        image = read_image(path, 3)
        seconds, faces = timed(lambda image=image: finder.find(image))
        print(f"  {path.name:16s} {image.width}x{image.height:<5d} {len(faces)} face(s)  {seconds * 1000:6.0f} ms")
    canvas = read_image(PHOTOS / "chelsea.png", 3).resize((1280, 852))
    for i, (name, size) in enumerate(zip(GROUP * 2, [70, 190, 110, 150, 160, 90, 130, 100])):
        face = read_image(SHARED / "fer2013" / "val" / name, 3).resize((size, size), Image.Resampling.BICUBIC)
        canvas.paste(face, (40 + 155 * i, 80 if i % 2 else 520))
    seconds, faces = timed(lambda: finder.find(canvas))
    print(f"  {'group (8 faces)':16s} 1280x852  {len(faces)} face(s)  {seconds * 1000:6.0f} ms")


def classify(classifier: Classifier, crops: list[Image.Image]) -> np.ndarray:
    pixels = np.stack([model_pixels(crop, classifier.preprocess) for crop in crops])
    return classifier.probabilities(pixels).argmax(axis=1)


def box_crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The unaligned alternative: a square around the detector box, as tall as the box."""
    x, y, w, h = box
    cx, cy, side = x + w / 2, y + h / 2, h
    return image.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))


def crops_like_training(finder: FaceFinder, count: int, seed: int = 0) -> None:
    classifier = resolve_model(None)
    files = find_labelled_images(SHARED / "fer2013" / "val")
    picks = np.linspace(0, len(files.paths) - 1, count).round().astype(int)
    rng = random.Random(seed)
    backgrounds = [read_image(PHOTOS / f"{name}.png", 3) for name in ("coffee", "chelsea")]
    originals, aligned, boxed, truth = [], [], [], []
    missed = 0
    for i in picks:
        face = read_image(files.paths[i], 3)
        size = rng.randint(100, 200)
        tilt = rng.uniform(-20, 20)
        scene = rng.choice(backgrounds).resize((480, 480))
        tilted = face.resize((size, size), Image.Resampling.BICUBIC).rotate(tilt, Image.Resampling.BICUBIC)
        scene.paste(tilted, (rng.randint(0, 480 - size), rng.randint(0, 480 - size)))
        faces = finder.find(scene)
        if not faces:
            missed += 1
            continue
        best = max(faces, key=lambda f: f.box[2] * f.box[3])
        originals.append(face)
        aligned.append(best.crop)
        boxed.append(box_crop(scene, best.box))
        truth.append(classifier.class_names.index(files.class_names[files.labels[i]]))
    truth = np.array(truth)
    print(
        f"\nFER2013 val faces enlarged to 100-200 px, tilted up to 20 degrees, pasted into photos "
        f"({count} faces, detector found {count - missed}); model {classifier.name}, accuracy on the found ones:"
    )
    for name, crops in (
        ("original 48x48 crops (--faces none)", originals),
        ("detected + aligned (fer_cli)", aligned),
        ("detected, unaligned box crop", boxed),
    ):
        print(f"  {name:38s} {np.mean(classify(classifier, crops) == truth):.1%}")


def measure_template(finder: FaceFinder, count: int = 1500) -> None:
    """Mean landmark positions of training faces (as fractions of the crop), left-right symmetrised."""
    paths = sorted((SHARED / "fer2013" / "train").glob("*/*.png"))
    random.Random(2).shuffle(paths)
    points = []
    for path in paths[:count]:
        face = read_image(path, 3).resize((96, 96), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (192, 192), (128, 128, 128))
        canvas.paste(face, (48, 48))
        found = finder.detector.detect(np.asarray(canvas))
        if found and found[0].score > 0.95:
            points.append((np.array(found[0].landmarks) - 48) / 96)
    mean = np.mean(points, axis=0)
    mirrored = mean[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    print(f"{len(points)} of {count} training faces; template:\n{np.round((mean + mirrored) / 2, 3).tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", action="store_true", help="re-measure the FER2013 landmark template")
    parser.add_argument("--count", type=int, default=900, help="val faces to paste into photos")
    args = parser.parse_args()
    finder = FaceFinder("detect")
    if args.template:
        measure_template(finder)
        return
    detection_times(finder)
    crops_like_training(finder, args.count)


if __name__ == "__main__":
    main()
