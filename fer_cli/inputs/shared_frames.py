"""Video frames handed to the reading workers through shared memory rather than through their pipes.

A 720p frame is 2.7 MB of RGB. Pickled through a worker's pipe it is copied four times (twice in the kernel),
about 9 ms of CPU a frame on a 2-core machine: a quarter of what reading the frame costs. Instead, the main
process copies each batch's frames into one shared memory block and sends only where each frame lies in it
(``SharedPixels``). The worker reads them in place. Once that batch's result is back the block takes a later
batch: a fresh block costs a page fault a page on both sides (as much as the pipe on a VM), a block used again
none. Workers keep the blocks they opened open. Every block is freed when the run ends or stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from .video import VideoFrame

BLOCK_STEP = 4 * 2**20  # block sizes are rounded up to this, so that one serves batches of slightly different sizes
KEPT_BLOCKS = 8  # blocks kept for later batches (the batches in flight at once are fewer: 2 per worker)


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
        self.blocks: deque[shared_memory.SharedMemory | None] = deque()  # the batches in flight, in order
        self.free: list[shared_memory.SharedMemory] = []  # blocks whose batch is back, for later batches
        # Workers forked from here report the blocks they open to this process's tracker, not to one of their own
        # (which would free the blocks as "leaked" when the worker ends).
        resource_tracker.ensure_running()

    def share(self, batch: list[tuple[int, object]]) -> list[tuple[int, object]]:
        frames = [item for _, item in batch if isinstance(item, VideoFrame) and isinstance(item.pixels, np.ndarray)]
        if not frames:
            self.blocks.append(None)
            return batch
        block = self._block(sum(frame.pixels.nbytes for frame in frames))
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
        """``results`` (one per batch shared, in order), each batch's block free for another as its result passes;
        every block freed at the end."""
        try:
            for result in results:
                if (block := self.blocks.popleft()) is not None:
                    self.free.append(block)
                while len(self.free) > KEPT_BLOCKS:
                    _unlink(self.free.pop(0))
                yield result
        finally:
            for block in [*self.blocks, *self.free]:
                if block is not None:
                    _unlink(block)
            self.blocks.clear()
            self.free.clear()

    def _block(self, size: int) -> shared_memory.SharedMemory:
        """The smallest free block that holds ``size`` bytes, or a new one."""
        fits = [block for block in self.free if block.size >= size]
        if fits:
            block = min(fits, key=lambda block: block.size)
            self.free.remove(block)
            return block
        return shared_memory.SharedMemory(create=True, size=-(-size // BLOCK_STEP) * BLOCK_STEP)


def _unlink(block: shared_memory.SharedMemory) -> None:
    block.close()
    block.unlink()


_opened: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()  # in a worker: the blocks it has open


def read_shared(function, batch: list[tuple[int, object]]):
    """``function(batch)`` in a worker, each frame's ``SharedPixels`` read in place (its block kept open for the
    next batches that use it: the last ``KEPT_BLOCKS`` opened)."""
    for name in {item.pixels.block for _, item in batch if _is_shared(item)}:
        if name in _opened:
            _opened.move_to_end(name)
        else:
            _opened[name] = shared_memory.SharedMemory(name)
    while len(_opened) > KEPT_BLOCKS:
        with contextlib.suppress(BufferError):  # a view still held (by an error's traceback): closed with it
            _opened.popitem(last=False)[1].close()
    return function([(number, _in_place(item, _opened) if _is_shared(item) else item) for number, item in batch])


def _is_shared(item) -> bool:
    return isinstance(item, VideoFrame) and isinstance(item.pixels, SharedPixels)


def _in_place(frame: VideoFrame, blocks: dict[str, shared_memory.SharedMemory]) -> VideoFrame:
    where = frame.pixels
    pixels = np.ndarray(where.shape, np.uint8, blocks[where.block].buf, where.offset)
    return dataclasses.replace(frame, pixels=pixels)
