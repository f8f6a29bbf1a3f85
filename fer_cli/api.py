"""fer_cli from Python: load a model or an ensemble, predict on files, folders, PIL images or numpy arrays, score
a labelled folder, train. The records are the ones `fer predict -f json` writes, one per face (or per input without
a face, or that could not be read); a video's carry its frame, time and track.

    import fer_cli

    model = fer_cli.load()                                   # the default model; or a shipped name, or a file
    for record in model.predict(["photos/", "clip.mp4"]):
        print(record["path"], record["label"], record["confidence"])
    model.predict(numpy_face_crop)                           # (H, W) or (H, W, 3) uint8; PIL images too
    ensemble = fer_cli.load(["vgg32_ferplus", "resnet18_ferplus"])   # their mean vote
    report = ensemble.score("labelled/")                    # what `fer ensemble -f json` prints

Like the command line, nothing here imports torch on a CPU unless a checkpoint must be exported or trained.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import FerError

if TYPE_CHECKING:
    from .engine.train.config import TrainConfig
    from .models.classifier import Classifier
    from .outputs.results import Prediction

Input = Any  # a path (str or os.PathLike), a PIL image or a numpy array


@dataclass
class Model:
    """One model, or several voting (the mean of their probabilities, as `fer predict -m A -m B`)."""

    classifiers: list[Classifier]
    name: str = field(init=False)
    class_names: list[str] = field(init=False)

    def __post_init__(self):
        from .engine.predict import align_classes

        self.class_names = align_classes(self.classifiers)
        one = len(self.classifiers) == 1
        self.name = self.classifiers[0].name if one else "ensemble: mean probability"

    def vote(self, probs):
        """(faces, models, classes) -> (faces, classes): the one model's, or the mean of several."""
        from .engine.voting import mean_vote

        return probs[:, 0] if len(self.classifiers) == 1 else mean_vote(probs)

    def predictions(
        self,
        inputs: Input | Iterable[Input],
        *,
        faces: str = "auto",
        min_face: float | str | None = None,
        tta: str = "none",
        device: str = "auto",
        batch_size: int = 64,
        workers: int = 0,
        fps: float | None = None,
        start: float = 0.0,
        end: float | None = None,
        smooth: float | None = None,
    ) -> Iterator[Prediction]:
        """Each face's ``Prediction`` as it comes, in input order (``Prediction.to_dict()`` is its JSON record).

        ``inputs``: a path (an image, a video, a folder searched recursively, a glob), a PIL image, a numpy array,
        or an iterable of them. ``faces``: auto (crops go straight to the model, photos have their faces found),
        detect or none; ``min_face``: the smallest face searched for in a photo, pixels (30) or a share of its
        shorter side (0.05, "1/20"; by default 1/12, as `fer predict --min-face`); ``tta``: none, flip or crops; ``workers``: processes reading images (0: this one). Videos:
        frames at ``fps`` a second (None: every frame) from ``start`` to ``end`` seconds, each track's
        probabilities averaged over its last ``smooth`` seconds (None: not).
        """
        from .engine.predict import predict_stream, to_predictions
        from .engine.video_records import VideoRecords
        from .inputs.video import Sampling

        sampling = Sampling(fps, start, end) if (fps, start, end) != (None, 0.0, None) else None
        if smooth is not None and not smooth > 0:
            raise ValueError(f"smooth must be above 0 seconds, got {smooth:g}")
        videos = VideoRecords(smooth)
        items = list(_items(inputs))
        batches = predict_stream(
            self.classifiers, items, device, batch_size, workers, faces, tta=tta, sampling=sampling
        )
        for outcomes in batches:
            for outcome in outcomes:
                yield from videos.records(outcome, to_predictions(outcome, self.vote, self.class_names, self.name))

    def predict(self, inputs: Input | Iterable[Input], **options: Any) -> list[dict]:
        """Every record of ``predictions`` (same options), as the dicts `fer predict -f json` writes."""
        return [prediction.to_dict() for prediction in self.predictions(inputs, **options)]

    def score(
        self,
        folder: str | os.PathLike,
        *,
        votes: str | os.PathLike | None = None,
        split: str | None = None,
        weighted: bool = False,
        faces: str = "auto",
        min_face: float | str | None = None,
        tta: str = "none",
        device: str = "auto",
        batch_size: int = 64,
        workers: int = 0,
    ) -> dict:
        """Score the models and their votes on a labelled folder (one subfolder per class), or on the images a
        FER+-style ``votes`` CSV names (``split``: only its rows of that Usage): `fer ensemble -f json`'s report."""
        from .engine.ensemble import score_labelled, voted_files

        voted = voted_files(str(folder), str(votes), split) if votes is not None else None
        report, _ = score_labelled(
            self.classifiers, str(folder), weighted, device, batch_size, workers, faces=faces, tta=tta, votes=voted,
            min_face=_smallest(min_face),
        )  # fmt: skip
        return report


def load(models: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Model:
    """A shipped model by name (``fer models`` lists them), a checkpoint (.pt) or an exported model (.onnx), or
    several of them as an ensemble; None: the default model."""
    from .models.zoo import resolve_model

    if models is None or isinstance(models, (str, os.PathLike)):
        names = [None if models is None else os.fspath(models)]
    else:
        names = [os.fspath(name) for name in models]
        if not names:
            raise FerError("no model was named")
    return Model([resolve_model(name) for name in names])


def train(config: TrainConfig) -> dict:
    """Train as `fer train` does (``TrainConfig`` holds its options, ``data`` and ``out`` first); the best
    checkpoint is written to ``config.out``. Returns what `fer train` reports at its end."""
    from .engine.train.run import train as run

    return run(config)


def _smallest(min_face: float | str | None) -> float | None:
    from .inputs.faces import check_min_face, parse_min_face

    if min_face is None:
        return None
    return parse_min_face(min_face) if isinstance(min_face, str) else check_min_face(min_face)


def _items(inputs) -> Iterator:
    """The inputs as `predict_stream` takes them: paths expanded (folders, globs), images in memory named by their
    place in the list."""
    from .inputs.images import InMemoryImage, iter_image_paths

    if isinstance(inputs, (str, os.PathLike)) or _is_image(inputs):
        inputs = [inputs]
    for number, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            yield from iter_image_paths([os.fspath(item)], videos=True)
        elif _is_image(item):
            yield InMemoryImage.of(item, f"<image {number}>")
        else:
            raise TypeError(f"input {number}: a path, a PIL image or a numpy array, not {type(item).__name__}")


def _is_image(item) -> bool:
    kind = type(item)
    return kind.__module__.startswith("PIL.") or (kind.__module__ == "numpy" and kind.__name__ == "ndarray")
