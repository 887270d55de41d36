"""Reading windows on threads (OpenSlide releases the GIL) with a bounded read-ahead."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from omniseg_rt.slide.plan import WindowSpec, read_window


class Prefetcher:
    """Reads ``specs`` in order on ``threads`` threads, at most ``ahead`` windows ahead.

    Iterating yields (spec, pixels) in the order given; ``seconds`` sums the reading time of
    all threads. Memory: ``ahead`` windows at most, whatever the slide's size.
    """

    def __init__(self, reader, threads: int, ahead: int) -> None:
        self.reader, self.ahead = reader, max(1, ahead)
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="omniseg-read")
        self.seconds = 0.0

    def _timed(self, spec: WindowSpec) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        pixels = read_window(self.reader, spec)
        return pixels, time.perf_counter() - start

    def iterate(self, specs: Iterable[WindowSpec]) -> Iterator[tuple[WindowSpec, np.ndarray]]:
        pending: deque = deque()
        source = iter(specs)
        for spec in source:
            pending.append((spec, self.pool.submit(self._timed, spec)))
            if len(pending) >= self.ahead:
                break
        while pending:
            spec, future = pending.popleft()
            pixels, seconds = future.result()
            self.seconds += seconds
            nxt = next(source, None)
            if nxt is not None:
                pending.append((nxt, self.pool.submit(self._timed, nxt)))
            yield spec, pixels

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
