"""Reading threads shared fairly between requests, within a memory budget.

A request's images are read (decoded, searched for faces, made into model pixels) one task each.
The pool's threads take tasks from the requests waiting in turn, one task of each request before a
second of any, and one request holds at most half the threads, so a one-image request starts at
once or soon, not behind a 100-image request that came first. Each task declares the memory it may
hold at its peak (a decode's estimate); tasks run only while the ones running together fit in the
budget, so many large photos at once are decoded a few at a time instead of all at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

TRIM_AFTER = 64 * 2**20  # after a task this large, hand freed memory back to the system (see _trim)


class Stopping(RuntimeError):
    """The server is stopping: work not yet started is dropped."""


class MemoryBudget:
    """Bytes held by tasks running at once, at most ``capacity``; a task larger than the whole
    budget runs alone."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = max(0, min(amount, self.capacity))
        with self._changed:
            self._changed.wait_for(lambda: self.used + amount <= self.capacity)
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()
            if amount >= TRIM_AFTER:
                _trim()


@dataclass
class Task:
    run: Callable[[], Any]
    memory: int = 0  # the most bytes it may hold while it runs (an estimate)


@dataclass
class _Job:
    tasks: list[Task]
    results: list = field(default_factory=list)
    started: int = 0  # tasks handed to a thread so far
    finished: int = 0
    running: int = 0
    future: Future = field(default_factory=Future)


class FairPool:
    """``threads`` threads running the tasks of many jobs, round robin between the jobs."""

    def __init__(self, threads: int, budget: MemoryBudget, name: str = "fer-read"):
        self.budget = budget
        self.per_job = max(1, threads // 2)  # threads one job may hold at once: the others stay free for the rest
        self._turns: deque[_Job] = deque()  # jobs with a task not yet started, in the order of their turns
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, tasks: list[Task]) -> Future:
        """Run ``tasks``; the future's result is their results, in order. The first task to raise
        fails the job (its tasks not yet started are dropped); cancelling the future drops them too."""
        job = _Job(tasks, [None] * len(tasks))
        if not tasks:
            job.future.set_result([])
            return job.future
        with self._changed:
            if self._closed:
                job.future.set_exception(Stopping("the server is stopping"))
                return job.future
            self._turns.append(job)
            self._changed.notify()
        return job.future

    @property
    def waiting(self) -> int:
        """Tasks not yet started."""
        with self._changed:
            return sum(len(job.tasks) - job.started for job in self._turns)

    def close(self) -> None:
        """Drop the tasks not yet started (their jobs fail with ``Stopping``), let the running ones
        end, and stop the threads."""
        with self._changed:
            self._closed = True
            dropped, self._turns = list(self._turns), deque()
            self._changed.notify_all()
        for job in dropped:
            _settle(job.future, error=Stopping("the server is stopping"))
        for thread in self._threads:
            thread.join()

    def _next(self) -> tuple[_Job, int] | None:
        with self._changed:
            while True:
                for job in [job for job in self._turns if job.future.done()]:  # failed or cancelled: drop the rest
                    self._turns.remove(job)
                job = next((job for job in self._turns if job.running < self.per_job), None)
                if job is not None:
                    break
                if self._closed and not self._turns:
                    return None
                self._changed.wait()
            self._turns.remove(job)
            index = job.started
            job.started += 1
            job.running += 1
            if job.started < len(job.tasks):
                self._turns.append(job)  # its next task waits its turn behind the other jobs'
            return job, index

    def _work(self) -> None:
        while (turn := self._next()) is not None:
            job, index = turn
            task = job.tasks[index]
            try:
                if not job.future.done():
                    with self.budget.hold(task.memory):
                        job.results[index] = task.run()
            except BaseException as error:  # noqa: BLE001: handed to the request waiting for it
                _settle(job.future, error=error)
            with self._changed:
                job.finished += 1
                job.running -= 1
                complete = job.finished == len(job.tasks)
                self._changed.notify()  # its job may take another thread now
            if complete:
                _settle(job.future, result=job.results)


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it already has one (failed before, or cancelled by its request)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def trim() -> None:
    """Hand freed memory back to the system now (the server calls it when it falls idle)."""
    _trim()


def _trim() -> None:
    """glibc keeps freed memory in its arenas (one per thread that allocated): after a large decode,
    ask it to hand what it can back, so the server's RSS returns near idle instead of staying at
    its peak. Elsewhere (musl, macOS) there is nothing to call, and nothing to do."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim():
    with contextlib.suppress(OSError, AttributeError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    return None


_malloc_trim = _find_malloc_trim()
