"""The one prediction path: image paths in, faces with class probabilities out, streamed batch by batch.

Images are read, searched for faces (``faces.FaceFinder``) and turned into model pixels in worker
processes, a bounded number of batches ahead, so memory stays flat however many inputs there are;
each distinct preprocessing among the models is applied once per face, so an ensemble of models
that share it decodes every image once. All faces of a batch go through each model together.
Unreadable inputs travel through the same stream as failures, in input order. Nothing here imports
torch: a checkpoint's runner brings it, an exported model's does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from PIL import UnidentifiedImageError

from ..errors import FerError, ModelError
from ..inputs.faces import FaceFinder, FacePolicy, size_warning
from ..inputs.images import READ_ERRORS, ImageBytes, InMemoryImage, MissingInput, model_pixels, read_image
from ..inputs.shared_frames import SharedFrames, read_shared
from ..inputs.video import Sampling, VideoFrame, has_videos, input_batches, without_pixels
from ..models.classifier import Classifier
from ..models.tta import TTA
from ..outputs.results import Prediction


@dataclass
class FaceOutcome:
    """One face of an input: where it is and its class probabilities from each model (M, C)."""

    index: int
    box: tuple[int, int, int, int]
    score: float | None
    probs: np.ndarray
    fallback: bool = False  # the whole image, standing in because no face was found


@dataclass
class Outcome:
    """One input: its faces (possibly none), or the reason it could not be read."""

    path: str
    faces: list[FaceOutcome] = field(default_factory=list)
    error: str | None = None
    frame: VideoFrame | None = None  # a video's frame (without its pixels); None for an image


def align_classes(classifiers: list[Classifier]) -> list[str]:
    """The class order all models share (the first model's); refuse models with other class sets."""
    reference = classifiers[0].class_names
    for classifier in classifiers[1:]:
        if sorted(classifier.class_names) != sorted(reference):
            only_here = sorted(set(classifier.class_names) - set(reference))
            only_there = sorted(set(reference) - set(classifier.class_names))
            raise ModelError(
                f"models '{classifiers[0].name}' and '{classifier.name}' predict different classes "
                f"(only in {classifier.name}: {', '.join(only_here) or '-'}; "
                f"only in {classifiers[0].name}: {', '.join(only_there) or '-'}); they cannot vote together"
            )
    return list(reference)


def _preprocess_key(preprocess: dict) -> tuple:
    return (preprocess["size"], preprocess["channels"], tuple(preprocess["mean"]), tuple(preprocess["std"]))


class _InputReader:
    """Reads each input once, finds its faces, and applies every distinct preprocessing to each face."""

    def __init__(self, preprocesses: list[dict], finder: FaceFinder):
        self.preprocesses = preprocesses
        self.finder = finder

    def read(self, index: int, item: str | MissingInput | ImageBytes):
        """One input: (index, its faces' places, their pixels per preprocessing, the error or None)."""
        if isinstance(item, MissingInput):
            return index, [], [], item.reason
        try:
            # grayscale files stay grayscale: no needless conversion
            image = item.image() if isinstance(item, (VideoFrame, InMemoryImage)) else read_image(item, channels=0)
            faces = self.finder.find(image)
            pixels = [[model_pixels(face.crop, p) for p in self.preprocesses] for face in faces]
        except READ_ERRORS as error:
            return index, [], [], _describe_read_error(item, error)
        return index, [(face.index, face.box, face.score, face.fallback) for face in faces], pixels, None

    def read_batch(self, batch: list[tuple[int, str | MissingInput | ImageBytes]]):
        return self.stack([self.read(index, item) for index, item in batch])

    def stack(self, read: list[tuple]):
        """Inputs read one by one (``read``'s results) -> every face's pixels stacked per preprocessing,
        remembering which input each came from: (inputs with their errors, face owners, pixel stacks)."""
        owners = [(index, place) for index, places, _, _ in read for place in places]
        faces = [pixels for _, _, face_pixels, _ in read for pixels in face_pixels]
        stacks = [np.stack([pixels[k] for pixels in faces]) for k in range(len(self.preprocesses))] if faces else []
        inputs = [(index, error) for index, _, _, error in read]
        return inputs, owners, stacks


_worker_reader: _InputReader | None = None


def _start_worker(reader: _InputReader) -> None:
    """Each worker reads with one thread (there are several workers), as DataLoader workers do: the
    face detector's onnxruntime sessions are made with one, numpy's BLAS (the detector's crops, the
    alignment) is held to one here (its own threads, spinning beside the other workers', made photos
    9 times slower on 2 cores), and a torch inherited from the parent must not reuse its thread pool
    after the fork."""
    global _worker_reader
    _worker_reader = reader
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def stay_quiet_and_die_with_parent() -> None:
    """In a worker process: Ctrl-C (sent to the whole terminal group) is the main process's to
    handle, SIGTERM just ends the worker, and on Linux the kernel ends it when the main process
    dies, however it dies (even SIGKILL), so no worker is left behind holding its memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, STOP_SIGNALS
    )  # held since the fork (``signals_held``); now they may come
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the main process died before the line above
            os._exit(1)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_started(initializer: Callable, state) -> None:
    """Every pool worker's first step: its own handlers, then the stop signals the fork held let through (a
    SIGTERM sent meanwhile ends it now), then the caller's ``initializer``."""
    stay_quiet_and_die_with_parent()
    initializer(state)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM held back while worker processes are forked, and delivered after. A stop signal that
    landed during a fork ran the main process's handler inside an at-fork hook (logging's), where Python swallows
    exceptions: the main process never saw its stop, the new worker died of the same signal, and the run ended as
    "a reading worker process died" (exit 2, not 143). Held, it is raised here, as the block ends; a worker starts
    with both held (the mask is inherited) until its initializer has set its own handlers."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _read_batch_in_worker(batch):
    return read_shared(_worker_reader.read_batch, batch)


def in_order(
    function: Callable, batches: Iterable, workers: int, initializer: Callable, state, ahead: int = 2
) -> Iterator:
    """``map(function, batches)`` in ``workers`` processes, results in order, at most ``ahead``
    batches per worker in flight (so nothing piles up when the consumer is slower)."""
    pool = ProcessPoolExecutor(workers, initializer=_worker_started, initargs=(initializer, state))
    pending: deque = deque()
    forked: list = []
    try:
        for batch in batches:
            with signals_held() if not pending else contextlib.nullcontext():  # the first submit forks the workers
                try:
                    pending.append(pool.submit(function, batch))
                finally:  # the workers, known as soon as they exist, whatever happens next
                    forked = forked or list((getattr(pool, "_processes", None) or {}).values())
            if len(pending) >= ahead * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        _shut_down(pool, forked)
        raise FerError(
            "a reading worker process died (out of memory, or a crash in an image decoder); "
            "--workers 0 reads in the main process and shows which input it was"
        ) from None
    except BaseException:  # an error, Ctrl-C, a signal, or the consumer gone: stop the workers now
        _shut_down(pool, forked)
        raise
    _shut_down(pool, forked)


def _shut_down(pool: ProcessPoolExecutor, forked: list) -> None:
    """Stop a pool's workers and wait for them. A signal that lands while ``submit`` is starting the pool's manager
    thread leaves a thread that never started, which ``shutdown`` cannot join (RuntimeError, hiding the signal's
    own exception): then the workers are ended here, and the caller still sees the signal. Any worker of ``forked``
    still alive after the shutdown is ended too: a stop that landed as the pool broke (one worker killed by it, the
    other forked a moment later) once left an idle worker that the interpreter's exit then waited for forever."""
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except RuntimeError:
        pool.shutdown(wait=False, cancel_futures=True)
    for process in forked:
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


def read_batches(
    items: list[str | MissingInput | ImageBytes],
    reader: _InputReader,
    batch_size: int,
    workers: int,
    sampling: Sampling | None = None,
    sent: deque | None = None,
) -> Iterator[tuple[list, list, list[np.ndarray]]]:
    """Every input read, searched for faces and made into model pixels, batch by batch in input
    order, in ``workers`` processes (0: here): (inputs with their errors, face owners, pixel stacks).

    No more workers start than there are batches, and a single batch is read here: the model waits for
    it whoever reads it, and starting a process costs more than it could win (`fer predict face.png`).
    Videos are decoded here as their frames are needed (``sampling`` says which), and each frame is an input
    of its own, numbered in the stream; ``sent`` (when given) receives each batch's ``{number: input}``
    (frames without their pixels) as it leaves, for the caller to pair with its result."""
    if has_videos(items):  # how many frames there are is known only once they are decoded
        batches = input_batches(items, sampling or Sampling(), batch_size)
    else:
        numbered = list(enumerate(items))
        batches = (numbered[start : start + batch_size] for start in range(0, len(numbered), batch_size))
        workers = min(workers, -(-len(numbered) // batch_size)) if len(numbered) > batch_size else 0
    if sent is not None:
        batches = _remembered(batches, sent)
    if workers > 0 and has_videos(items):  # frames go to the workers through shared memory
        frames = SharedFrames()
        batches = map(frames.share, batches)
        return frames.results(in_order(_read_batch_in_worker, batches, workers, _start_worker, reader))
    if workers > 0:
        return in_order(_read_batch_in_worker, batches, workers, _start_worker, reader)
    return map(reader.read_batch, batches)


def _remembered(batches: Iterable[list], sent: deque) -> Iterator[list]:
    for batch in batches:
        sent.append({number: without_pixels(item) for number, item in batch})
        yield batch


def _describe_read_error(item: str | ImageBytes, error: Exception) -> str:
    if isinstance(item, ImageBytes) and not item.data:
        return "empty file"
    if isinstance(item, str) and os.path.isfile(item) and os.path.getsize(item) == 0:
        return "empty file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (or an unsupported format)"
    return f"cannot read image: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


class Predictor:
    """Models made ready on a device, and the reader that feeds them: ``predict_stream``'s two
    halves, for a caller that reads inputs and gathers batches itself (``fer serve`` reads each
    request in its own thread and puts the faces of concurrent requests through the models together).

    ``read`` may run in several threads at once; ``outcomes`` runs the models.
    """

    def __init__(
        self,
        classifiers: list[Classifier],
        device: str = "auto",
        faces: FacePolicy | str = FacePolicy.auto,
        whole_image_if_no_face: bool = False,
        tta: TTA | str = TTA.none,
        detector_on_device: bool = True,
        min_face: float | None = None,
    ):
        self.classifiers = classifiers
        self.class_names = align_classes(classifiers)
        self.tta = tta
        # Models that share a preprocessing share its pixels.
        distinct: dict[tuple, dict] = {}
        for classifier in classifiers:
            distinct.setdefault(_preprocess_key(classifier.preprocess), classifier.preprocess)
        keys, preprocesses = list(distinct), list(distinct.values())
        self.which_input = [keys.index(_preprocess_key(c.preprocess)) for c in classifiers]
        self.columns = [[c.class_names.index(name) for name in self.class_names] for c in classifiers]
        self.devices = [classifier.runner.prepare(device) for classifier in classifiers]
        detector_device = self.devices[0] if detector_on_device and self.devices[0].startswith("cuda") else "cpu"
        finder = FaceFinder(faces, detector_device, whole_image_if_no_face, min_face)
        self.reader = _InputReader(preprocesses, finder)

    def read(self, index: int, item: str | MissingInput | ImageBytes):
        """One input read, its faces found and made into model pixels (see ``_InputReader.read``)."""
        return self.reader.read(index, item)

    def outcomes(self, items, inputs: list, owners: list, stacks: list[np.ndarray]) -> list[Outcome]:
        """A read batch (``read_batches``' or ``reader.stack``'s) through every model: each input's
        Outcome, in the batch's order; ``items[index]`` is the input numbered ``index``."""
        outcomes = {index: empty_outcome(items[index], error) for index, error in inputs}
        if owners:
            stacked = np.stack(
                [
                    classifier.probabilities(stacks[k], tta=self.tta)[:, order]
                    for classifier, k, order in zip(self.classifiers, self.which_input, self.columns)
                ],
                axis=1,
            )  # (faces, M, C)
            for row, (index, (face, box, score, fallback)) in enumerate(owners):
                outcomes[index].faces.append(FaceOutcome(face, box, score, stacked[row], fallback))
        return [outcomes[index] for index, _ in inputs]


def predict_stream(
    classifiers: list[Classifier],
    items: Iterable[str | MissingInput | ImageBytes],
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
    faces: FacePolicy | str = FacePolicy.auto,
    whole_image_if_no_face: bool = False,
    tta: TTA | str = TTA.none,
    sampling: Sampling | None = None,
    on_ready: Callable[[], None] | None = None,
    min_face: float | None = None,
) -> Iterator[list[Outcome]]:
    """Yield, per batch of inputs and in input order, each input's faces with every model's probabilities.

    Probabilities are temperature-scaled softmax outputs with columns in ``align_classes`` order;
    ``tta`` averages each face's views (see ``tta``). Faces are found in the worker processes, on
    the CPU beside decoding (only crops leave a worker); with ``workers=0`` on CUDA the detector
    runs on the GPU. A video's frames are inputs of their own (``sampling`` says which are read), their
    outcomes carrying their ``frame``. ``on_ready`` is called once the models are ready to run (a checkpoint's
    first ONNX export done), before the first input is read. ``min_face``: the smallest face searched for
    (``faces.smallest_face``).
    """
    align_classes(classifiers)
    items = list(items)
    if not items:
        return
    predictor = Predictor(classifiers, device, faces, whole_image_if_no_face, tta, workers == 0, min_face)
    if on_ready is not None:
        on_ready()
    sent: deque = deque()
    for inputs, owners, stacks in read_batches(items, predictor.reader, batch_size, workers, sampling, sent):
        yield predictor.outcomes(sent.popleft(), inputs, owners, stacks)


def empty_outcome(item: str | MissingInput | ImageBytes | VideoFrame, error: str | None = None) -> Outcome:
    """An input's Outcome before its faces are added: its path (or name), its frame if it is one, its error."""
    return Outcome(_path(item), error=error, frame=_frame(item))


def _path(item: str | MissingInput | ImageBytes | VideoFrame) -> str:
    if isinstance(item, (ImageBytes, InMemoryImage)):
        return item.name
    if isinstance(item, VideoFrame):
        return item.path
    return item.source if isinstance(item, MissingInput) else item


def _frame(item) -> VideoFrame | None:
    return item if isinstance(item, VideoFrame) else None


NOT_FINITE = "the model gave no usable probabilities (NaN or infinite): it may have diverged in training"


def to_predictions(outcome: Outcome, vote, class_names: list[str], model: str) -> list[Prediction]:
    """One Prediction per face of the outcome, with ``vote`` turning (N, M, C) into (N, C);
    one row saying so for an input without a face or that could not be read."""
    if outcome.error is not None:
        return [Prediction(path=outcome.path, error=outcome.error, model=model)]
    if not outcome.faces:
        return [Prediction(path=outcome.path, faces=0, model=model)]
    final = vote(np.stack([face.probs for face in outcome.faces]))
    predictions = []
    for face, probs in zip(outcome.faces, final):
        if not np.isfinite(probs).all():  # a diverged model: no label, and never NaN in JSON
            predictions.append(
                Prediction(path=outcome.path, face=face.index, faces=len(outcome.faces), box=face.box,
                           detector_score=face.score, model=model, error=NOT_FINITE)
            )  # fmt: skip
            continue
        best = int(np.argmax(probs))
        predictions.append(
            Prediction(
                path=outcome.path,
                face=face.index,
                faces=len(outcome.faces),
                box=face.box,
                detector_score=face.score,
                label=class_names[best],
                confidence=float(probs[best]),
                probabilities={name: float(p) for name, p in zip(class_names, probs)},
                model=model,
                warning=size_warning(face.box),
            )
        )
    return predictions
