"""Video frames handed to the reading workers through shared memory rather than through their pipes.

A 720p frame is 2.7 MB of RGB. Pickled through a worker's pipe it is copied four times (twice in the kernel),
about 9 ms of CPU a frame on a 2-core machine: a quarter of what reading the frame costs. Instead, the main
process copies each batch's frames into one shared memory block and sends only where each frame lies in it
(``SharedPixels``). The worker reads them in place. The block is freed once that batch's result is back, and
every block still held is freed when the run ends or stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from .video import VideoFrame


@dataclass(frozen=True)
class SharedPixels:
    """Where a frame's RGB pixels lie: in the shared memory block named ``block``, from byte ``offset``."""

    block: str
    offset: int
    shape: tuple[int, ...]


class SharedFrames:
    """Moves each batch's frame pixels into a shared memory block (``share``, in the order batches are sent) and
    frees the blocks in the same order as the batches' results come back (``results``)."""

    def __init__(self):
        self.blocks: deque[shared_memory.SharedMemory | None] = deque()
        # Workers forked from here report the blocks they open to this process's tracker, not to one of their own
        # (which would free the blocks as "leaked" when the worker ends).
        resource_tracker.ensure_running()

    def share(self, batch: list[tuple[int, object]]) -> list[tuple[int, object]]:
        frames = [item for _, item in batch if isinstance(item, VideoFrame) and isinstance(item.pixels, np.ndarray)]
        if not frames:
            self.blocks.append(None)
            return batch
        block = shared_memory.SharedMemory(create=True, size=sum(frame.pixels.nbytes for frame in frames))
        self.blocks.append(block)
        shared, offset = [], 0
        for number, item in batch:
            if isinstance(item, VideoFrame) and isinstance(item.pixels, np.ndarray):
                pixels = item.pixels
                np.ndarray(pixels.shape, np.uint8, block.buf, offset)[...] = pixels
                item = dataclasses.replace(item, pixels=SharedPixels(block.name, offset, pixels.shape))
                offset += pixels.nbytes
            shared.append((number, item))
        return shared

    def results(self, results: Iterable) -> Iterator:
        """``results`` (one per batch shared, in order), each batch's block freed as its result passes."""
        try:
            for result in results:
                self._free(self.blocks.popleft())
                yield result
        finally:
            while self.blocks:
                self._free(self.blocks.popleft())

    @staticmethod
    def _free(block: shared_memory.SharedMemory | None) -> None:
        if block is not None:
            block.close()
            block.unlink()


def read_shared(function, batch: list[tuple[int, object]]):
    """``function(batch)`` in a worker, each frame's ``SharedPixels`` read in place; the blocks closed after."""
    blocks: dict[str, shared_memory.SharedMemory] = {}
    for name in {item.pixels.block for _, item in batch if _is_shared(item)}:
        blocks[name] = shared_memory.SharedMemory(name)
    try:
        return function([(number, _in_place(item, blocks) if _is_shared(item) else item) for number, item in batch])
    finally:
        for block in blocks.values():
            with contextlib.suppress(BufferError):  # a view still held (by an error's traceback): closed with it
                block.close()


def _is_shared(item) -> bool:
    return isinstance(item, VideoFrame) and isinstance(item.pixels, SharedPixels)


def _in_place(frame: VideoFrame, blocks: dict[str, shared_memory.SharedMemory]) -> VideoFrame:
    where = frame.pixels
    pixels = np.ndarray(where.shape, np.uint8, blocks[where.block].buf, where.offset)
    return dataclasses.replace(frame, pixels=pixels)
