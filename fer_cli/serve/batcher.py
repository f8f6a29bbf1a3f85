"""Concurrent requests put through the models together.

Each request reads its own images (decoding, faces, model pixels) in a thread of its own; the
batcher's one thread then takes every request waiting, up to about ``max_faces`` faces, waits at
most ``window_s`` for more while the batch is short, and runs them through the models as one
batch. Under load, requests arriving while a batch runs make up the next one, so batches grow with
the load without a long window; alone, a request waits at most the window.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..engine.predict import Outcome, Predictor
from ..inputs.images import ImageBytes


@dataclass
class _Job:
    items: list[ImageBytes]
    read: list[tuple]  # Predictor.read's result per item, numbered from 0
    future: Future = field(default_factory=Future)

    @property
    def faces(self) -> int:
        return sum(len(places) for _, places, _, _ in self.read)


class Batcher:
    """One thread running the models on the read inputs of many requests at once."""

    def __init__(self, predictor: Predictor, max_faces: int = 64, window_s: float = 0.002):
        self.predictor = predictor
        self.max_faces = max_faces
        self.window_s = window_s
        self.batches = 0  # model batches run, and the requests and faces in them: /health shows them
        self.requests = 0
        self.faces = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fer-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: list[ImageBytes], read: list[tuple]) -> Future:
        """Queue one request's read inputs; the future's result is their Outcomes, in order."""
        job = _Job(items, read)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            jobs, faces = [job], job.faces
            deadline = time.monotonic() + self.window_s
            stopping = False
            while faces < self.max_faces:
                try:
                    wait = deadline - time.monotonic()
                    following = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                jobs.append(following)
                faces += following.faces
            self._run_batch(jobs)
            if stopping:
                return

    def _run_batch(self, jobs: list[_Job]) -> None:
        """The jobs' inputs numbered one after another, through the models, and handed back per job."""
        items: list[ImageBytes] = []
        read: list[tuple] = []
        for job in jobs:
            offset = len(items)
            items.extend(job.items)
            read.extend((offset + index, places, pixels, error) for index, places, pixels, error in job.read)
        try:
            inputs, owners, stacks = self.predictor.reader.stack(read)
            outcomes: list[Outcome] = self.predictor.outcomes(items, inputs, owners, stacks)
        except Exception as error:  # a model failing (out of memory): every waiting request hears of it
            for job in jobs:
                job.future.set_exception(error)
            return
        self.batches += 1
        self.requests += len(jobs)
        self.faces += len(owners)
        start = 0
        for job in jobs:
            job.future.set_result(outcomes[start : start + len(job.items)])
            start += len(job.items)
