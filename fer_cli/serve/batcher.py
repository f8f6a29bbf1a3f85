"""Concurrent requests put through the models together, fairly.

Each request's images are read first (``pool.FairPool``); the batcher's one thread then fills each
model batch with at most ``max_faces`` faces, taking them in turn from every request waiting, one
face of each before a second of any. A request's faces are split over as many batches as they
need, so a 3,000-face request neither makes one huge batch (memory grows with the batch) nor holds
up a one-face request that arrives meanwhile: that one's face goes into the next batch. While a batch
is short, the batcher waits at most ``window_s`` for more requests; under load, requests arriving
while a batch runs make up the next one, so batches fill without a long window.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError

import numpy as np

from ..engine.predict import Outcome, Predictor, empty_outcome
from ..inputs.images import ImageBytes
from .pool import Stopping


class _Job:
    """One request's read inputs (images, and the frames of its videos), and its faces' outcomes as their batches
    come back."""

    def __init__(self, items: list[ImageBytes], read: list[tuple], predictor: Predictor):
        self.items = items
        # Every face of the request, in order, with its owner and its pixels per preprocessing.
        self.inputs, self.owners, self.stacks = predictor.reader.stack(read)
        self.done = 0  # faces through the models so far
        self.faces: dict[int, list] = {index: [] for index, _ in self.inputs}
        self.future: Future = Future()

    @property
    def left(self) -> int:
        return len(self.owners) - self.done

    def outcomes(self) -> list[Outcome]:
        outcomes = [empty_outcome(self.items[index], error) for index, error in self.inputs]
        for outcome, (index, _) in zip(outcomes, self.inputs):
            outcome.faces = self.faces[index]
        return outcomes


class Batcher:
    """One thread running the models on the read inputs of many requests, a fair share of each batch apiece."""

    def __init__(self, predictor: Predictor, max_faces: int = 16, window_s: float = 0.002):
        self.predictor = predictor
        self.max_faces = max_faces
        self.window_s = window_s
        self.batches = 0  # model batches run, the requests answered and the faces in them: /health shows them
        self.requests = 0
        self.faces = 0
        self.faces_waiting = 0  # faces of the requests in hand not yet through the models
        self.submitted = 0  # requests handed over (by the event loop's thread)
        self._arrivals: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fer-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: list[ImageBytes], read: list[tuple]) -> Future:
        """Queue one request's read inputs; the future's result is their Outcomes, in order."""
        job = _Job(items, read, self.predictor)
        self.submitted += 1
        self._arrivals.put(job)
        return job.future

    def close(self) -> None:
        """Stop after the batch running now; requests not yet through the models fail with ``Stopping``."""
        self._arrivals.put(None)
        self._thread.join()

    def _run(self) -> None:
        turns: deque[_Job] = deque()  # requests with faces waiting, in the order of their turns
        while self._gather(turns):
            if slices := self._take_turns(turns):
                self._run_batch(slices, turns)
        for job in turns:  # the server is stopping: what has not run will not
            _settle(job.future, error=Stopping("the server is stopping"))
        with contextlib.suppress(queue.Empty):
            while True:
                if (job := self._arrivals.get_nowait()) is not None:
                    _settle(job.future, error=Stopping("the server is stopping"))

    def _gather(self, turns: deque[_Job]) -> bool:
        """Every request that has arrived joins the turns (waiting for one when there are none, and
        at most ``window_s`` for more while the batch would be short); False once told to stop."""
        if not turns and not self._arrive(self._arrivals.get(), turns):
            return False
        with contextlib.suppress(queue.Empty):
            while True:
                if not self._arrive(self._arrivals.get_nowait(), turns):
                    return False
        deadline = time.monotonic() + self.window_s
        while sum(job.left for job in turns) < self.max_faces:
            wait = deadline - time.monotonic()
            try:
                job = self._arrivals.get(timeout=wait) if wait > 0 else self._arrivals.get_nowait()
            except queue.Empty:
                break
            if not self._arrive(job, turns):
                return False
        return True

    def _arrive(self, job: _Job | None, turns: deque) -> bool:
        """Take in one arrival; False when it says to stop."""
        if job is None:
            return False
        if job.left == 0:  # no face to run (none found, or unreadable): answered at once
            self.requests += 1
            _settle(job.future, result=job.outcomes())
        else:
            self.faces_waiting += job.left
            turns.append(job)
        return True

    def _take_turns(self, turns: deque[_Job]) -> list[tuple[_Job, int, int]]:
        """The next batch: (request, first face, end) slices, one face of each request in turn up to
        max_faces; the request whose turn came next leads the next batch."""
        for job in [job for job in turns if job.future.cancelled()]:  # its client is gone
            turns.remove(job)
            self.faces_waiting -= job.left
        order = list(turns)
        counts = [0] * len(order)
        room, position = self.max_faces, 0
        while room and any(count < job.left for count, job in zip(counts, order)):
            turn = position % len(order)
            if counts[turn] < order[turn].left:
                counts[turn] += 1
                room -= 1
            position += 1
        if order:
            turns.rotate(-(position % len(order)))
        return [(job, job.done, job.done + count) for job, count in zip(order, counts) if count]

    def _run_batch(self, slices: list[tuple[_Job, int, int]], turns: deque[_Job]) -> None:
        """The slices' faces through the models as one batch, each face's outcome handed to its request."""
        items: list[ImageBytes] = []
        inputs: list[tuple] = []
        owners: list[tuple] = []
        parts: list[list[np.ndarray]] = []
        for job, start, end in slices:
            offset = len(items)
            items.extend(job.items)
            inputs.extend((offset + index, None) for index, _ in job.inputs)
            owners.extend((offset + index, place) for index, place in job.owners[start:end])
            parts.append([stack[start:end] for stack in job.stacks])
        stacks = [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        try:
            outcomes = self.predictor.outcomes(items, inputs, owners, stacks)
        except Exception as error:  # a model failing (out of memory): the requests in this batch hear of it
            for job, _, _ in slices:
                turns.remove(job)
                self.faces_waiting -= job.left
                _settle(job.future, error=error)
            return
        self.batches += 1
        self.faces += len(owners)
        self.faces_waiting -= len(owners)
        offset = 0
        for job, _, end in slices:
            for (index, _), outcome in zip(job.inputs, outcomes[offset : offset + len(job.items)]):
                job.faces[index].extend(outcome.faces)
            offset += len(job.items)
            job.done = end
            if job.left == 0:
                turns.remove(job)
                self.requests += 1
                _settle(job.future, result=job.outcomes())


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
