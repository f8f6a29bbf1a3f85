"""NAME.curves.png, redrawn from the history after every epoch (in a helper process when epochs are fast)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from ...outputs import figures
from ..predict import stay_quiet_and_die_with_parent


class CurvesPainter:
    """Redraws NAME.curves.png from the history after every epoch.

    On a CPU it draws in place: an epoch there takes tens of seconds, a drawing about 0.2 s of CPU.
    On a GPU an epoch can take 2 s, so it draws in a helper process and the loop never waits on
    matplotlib: the newest history is drawn as soon as the previous drawing is done (an epoch that
    ends meanwhile is folded into the next drawing), and ``close`` waits for the last one.
    """

    def __init__(self, path: Path, title: str, background: bool):
        self.path, self.title = path, title
        self.pool: ProcessPoolExecutor | None = None
        if background:
            self.pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=stay_quiet_and_die_with_parent
            )
        self.drawing: Future | None = None
        self.waiting: list[dict] | None = None  # the newest history, not yet handed over
        if self.pool is not None:
            self.drawing = self.pool.submit(int)  # start the helper (~0.4 s) while the first epoch runs

    def update(self, history: list[dict]) -> None:
        if self.pool is None:
            figures.draw_training_curves(history, self.path, self.title)
            return
        self.waiting = [dict(row) for row in history]
        self._hand_over()

    def _hand_over(self) -> None:
        if self.drawing is not None:
            if not self.drawing.done():
                return
            self.drawing.result()  # a drawing that failed (a full disk) fails the run, as in place
        if self.waiting is not None:
            self.drawing = self.pool.submit(figures.draw_training_curves, self.waiting, self.path, self.title)
            self.waiting = None

    def close(self, wait: bool = True) -> None:
        """Finish the last drawing (``wait``), or leave it (and the helper) at once."""
        if self.pool is None:
            return
        try:
            if wait:
                if self.drawing is not None:
                    self.drawing.result()
                    self.drawing = None
                self._hand_over()
                if self.drawing is not None:
                    self.drawing.result()
        finally:
            self.pool.shutdown(wait=wait, cancel_futures=not wait)
            self.pool = None
