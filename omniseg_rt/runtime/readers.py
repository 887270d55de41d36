"""Reading windows with a bounded read-ahead: on threads of this process (OpenSlide releases the
GIL) or on worker processes that each open the slide themselves.

Threads are the default and enough while the engine is the bottleneck (a CPU engine). OpenSlide
stops scaling at 6-8 threads of one process (decoding, resizing and its caches contend), so a fast
GPU engine is fed by ``ReadProcesses``: spawned workers (not forked: the parent holds threads and
GPU state), each with its own slide handle, returning windows through the pool's pipes.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from omniseg_rt.errors import OmnisegError
from omniseg_rt.slide.plan import WindowSpec, read_window

READ_WITH = ("threads", "processes")


class ReadWorkerError(OmnisegError, RuntimeError):
    """A reading process died (crashed, killed, out of memory) while reading a slide."""


class Prefetcher:
    """Reads ``specs`` in order, at most ``ahead`` windows ahead, on ``threads`` threads reading
    ``reader`` (or through ``submit``: spec -> a future of (pixels, seconds)).

    Iterating yields (spec, pixels) in the order given; ``seconds`` sums the reading time of
    all readers. Memory: ``ahead`` windows at most, whatever the slide's size. ``resize=False``:
    windows as read at their level (an engine resizes them on its device).
    """

    def __init__(self, reader, threads: int, ahead: int,
                 submit: Callable[[WindowSpec], Future] | None = None, describe: str = "", resize: bool = True) -> None:
        self.reader, self.ahead, self.resize = reader, max(1, ahead), resize
        self.pool = None if submit else ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="omniseg-read")
        self._submit = submit or (lambda spec: self.pool.submit(self._timed, spec))
        self.describe = describe
        self.seconds = 0.0

    def _timed(self, spec: WindowSpec) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        pixels = read_window(self.reader, spec, self.resize)
        return pixels, time.perf_counter() - start

    def iterate(self, specs: Iterable[WindowSpec]) -> Iterator[tuple[WindowSpec, np.ndarray]]:
        pending: deque = deque()
        source = iter(specs)
        try:
            for spec in source:
                pending.append((spec, self._submit(spec)))
                if len(pending) >= self.ahead:
                    break
            while pending:
                spec, future = pending.popleft()
                pixels, seconds = future.result()
                self.seconds += seconds
                nxt = next(source, None)
                if nxt is not None:
                    pending.append((nxt, self._submit(nxt)))
                yield spec, pixels
        except BrokenProcessPool as exc:
            raise ReadWorkerError(f"{self.describe}: a reading process died ({exc}); the bands finished so far are "
                                  "kept: run the same command again to resume (with --read-with threads if it "
                                  "happens again)") from None
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER_READER = None  # the slide handle of a reading process


def _open_in_worker(path: str, mpp: float | None) -> None:
    global _WORKER_READER
    from omniseg_rt.slide import open_slide

    _WORKER_READER = open_slide(Path(path), mpp)


def _read_in_worker(specs: list[WindowSpec], resize: bool) -> list[tuple[np.ndarray, float]]:
    out = []
    for spec in specs:
        start = time.perf_counter()
        pixels = read_window(_WORKER_READER, spec, resize)
        out.append((pixels, time.perf_counter() - start))
    return out


class _Chunks:
    """Hands consecutive windows to one reading process together, ``size`` at a time: neighbouring
    windows share the slide's tiles, which that process's tile cache then decodes once (dealt one
    by one, each of N processes would see every N-th window and decode every tile it touches)."""

    def __init__(self, pool: ProcessPoolExecutor, resize: bool, size: int) -> None:
        self.pool, self.resize, self.size = pool, resize, max(1, size)
        self.specs: list[WindowSpec] = []
        self.items: list[_ChunkItem] = []

    def submit(self, spec: WindowSpec) -> _ChunkItem:
        item = _ChunkItem(self)
        self.specs.append(spec)
        self.items.append(item)
        if len(self.specs) >= self.size:
            self.flush()
        return item

    def flush(self) -> None:
        """Send the windows collected so far (also when a reader waits on one of them)."""
        if self.specs:
            future = self.pool.submit(_read_in_worker, self.specs, self.resize)
            for index, item in enumerate(self.items):
                item.future, item.index = future, index
            self.specs, self.items = [], []


class _ChunkItem:
    """One window of a chunk, as the :class:`Prefetcher` sees a future: ``result()`` and ``cancel()``."""

    def __init__(self, chunks: _Chunks) -> None:
        self.chunks, self.future, self.index = chunks, None, 0

    def result(self) -> tuple[np.ndarray, float]:
        if self.future is None:
            self.chunks.flush()
        return self.future.result()[self.index]

    def cancel(self) -> bool:
        return self.future.cancel() if self.future is not None else True


class ReadProcesses:
    """``processes`` spawned workers reading one slide (opened once in each); started at once, so
    they start up while the parent detects tissue. ``prefetcher(ahead, resize)`` reads through them,
    consecutive windows in chunks (:class:`_Chunks`) of about ``ahead / (2 * processes)``, at most
    8, so every process still has work in flight."""

    def __init__(self, path: str | Path, mpp: float | None, processes: int) -> None:
        self.path = Path(path)
        self.processes = max(1, processes)
        self.pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_open_in_worker, initargs=(str(self.path), mpp))

    def prefetcher(self, ahead: int, resize: bool = True, chunk: int | None = None) -> Prefetcher:
        size = chunk or min(8, max(1, ahead // (2 * self.processes)))
        return Prefetcher(None, 0, ahead, submit=_Chunks(self.pool, resize, size).submit, describe=str(self.path))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
