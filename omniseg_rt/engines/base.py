"""The one Engine interface, over every backend.

An engine directory holds one graph per tissue set (by default one per scale group). Each graph
is run by a :class:`GraphRunner` of the engine's backend; the :class:`Engine` is the collection:

- ``engine.tissues``: task ids in output order (all graphs, in manifest order);
- ``engine.infer(images)``: uint8 [B, 3, H, W] -> float32 [B, T, H, W], every graph run on the
  same pixels (for patches already at the right magnification, e.g. evaluation);
- ``engine.runner(group)``: the runner of one scale group, which the slide pipeline feeds with
  windows read at that group's magnification; its ``submit_device`` keeps the margins where the
  network ran (``runner.arrays``, see ``arrays.py``) so that only uint8 masks cross to the host;
- ``engine.close()`` / ``with open_engine(path) as engine``.

Output buffers are fresh arrays owned by the caller (never reused by the engine).
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omniseg_rt.engines.arrays import HOST, Arrays
from omniseg_rt.errors import InvalidInputError, UsageError

if TYPE_CHECKING:
    from omniseg_rt.engines.manifest import EngineManifest


@dataclass(frozen=True)
class GraphSpec:
    """What an engine knows about one of its graphs (from the manifest)."""

    name: str
    tissues: tuple[int, ...]
    scale_group: str | None
    nominal_mpp: float | None
    file: str


class Ticket:
    """A submitted batch; ``result()`` waits for it (and for the batches submitted before it)."""

    def __init__(self, runner: InFlightRunner | None = None) -> None:
        self._runner = runner
        self._done = runner is None
        self._value: np.ndarray | None = None
        self._error: BaseException | None = None

    @classmethod
    def finished(cls, value: np.ndarray | None = None, error: BaseException | None = None) -> Ticket:
        ticket = cls()
        ticket._value, ticket._error = value, error
        return ticket

    def _settle(self, value: np.ndarray | None, error: BaseException | None) -> None:
        self._value, self._error, self._done = value, error, True

    def result(self) -> np.ndarray:
        while not self._done:
            self._runner._finish_oldest()
        if self._error is not None:
            raise self._error
        return self._value


class GraphRunner(abc.ABC):
    """Runs one graph: uint8 [B, 3, H, W] -> float32 [B, T, H, W] (fg minus bg logit)."""

    spec: GraphSpec
    arrays: Arrays = HOST  # what submit_device's outputs are (host numpy unless a device keeps them)
    #: True when a window's output does not depend on the other windows of its batch, to the bit
    #: (a compiled engine running one padded batch size); the slide pipeline then batches across bands
    batch_invariant: bool = False
    #: True when :meth:`submit_device` resizes windows on the device: the slide pipeline then
    #: hands over windows as read at their pyramid level, and the size to make them
    resizes: bool = False

    @abc.abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run one batch synchronously."""

    def submit_device(self, images: np.ndarray, size: int | None = None) -> Ticket:
        """Start a batch whose margins [B, T, H, W] stay where the network ran, as ``self.arrays``
        arrays, for the stitcher (which sends only uint8 masks to the host). ``size``: resize the
        windows (uint8 [B, 3, h, w]) to ``size`` x ``size`` first, where :attr:`resizes`. Host
        backends: the same as :meth:`submit`."""
        if size is not None and images.shape[2:] != (size, size):
            raise UsageError(f"{type(self).__name__} does not resize windows ({images.shape[2:]} -> {size})")
        return self.submit(images)

    def submit(self, images: np.ndarray) -> Ticket:
        """Start a batch; ``.result()`` gives what :meth:`infer` gives. Here: synchronously;
        :class:`InFlightRunner` backends keep several batches in flight."""
        try:
            return Ticket.finished(self.infer(images))
        except Exception as exc:  # delivered by result(), as an asynchronous run would
            return Ticket.finished(error=exc)

    def close(self) -> None:
        """Release backend resources."""


class InFlightRunner(GraphRunner):
    """A runner with a few slots (infer requests, CUDA streams) that start a batch now and
    finish it later, in submission order: batch k+1 is copied in while batch k computes.

    Subclasses call ``_init_slots`` and implement ``_launch`` (start a batch in a free slot) and
    ``_collect`` (wait for a slot, return its output as a fresh array).
    """

    max_batch: int | None = None  # largest batch one slot takes (None: any)

    def _init_slots(self, slots: Sequence[object]) -> None:
        self._free = deque(slots)
        self._busy: deque[tuple[object, Ticket]] = deque()
        self._slot_count = len(slots)

    @abc.abstractmethod
    def _launch(self, slot: object, images: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _collect(self, slot: object) -> np.ndarray: ...

    def _start(self, images: np.ndarray) -> Ticket:
        if not self._free:  # every slot busy: finish the oldest first (bounded work in flight)
            self._finish_oldest()
        slot = self._free.popleft()
        ticket = Ticket(self)
        try:
            self._launch(slot, images)
        except BaseException:
            self._free.appendleft(slot)
            raise
        self._busy.append((slot, ticket))
        return ticket

    def _finish_oldest(self) -> None:
        slot, ticket = self._busy.popleft()
        try:
            ticket._settle(self._collect(slot), None)
        except Exception as exc:
            ticket._settle(None, exc)
        finally:
            self._free.append(slot)

    def submit(self, images: np.ndarray) -> Ticket:
        return self._start(check_images(images))

    def infer(self, images: np.ndarray) -> np.ndarray:
        """One batch, spread over every slot (and cut to ``max_batch``)."""
        images = check_images(images)
        size = -(-len(images) // self._slot_count)
        if self.max_batch:
            size = min(size, self.max_batch)
        tickets = [self._start(np.ascontiguousarray(images[i:i + size])) for i in range(0, len(images), size)]
        outputs = [t.result() for t in tickets]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def close(self) -> None:
        while self._busy:
            self._finish_oldest()
        self._free.clear()


def check_images(images: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Validate a batch at the engine boundary: uint8 [B, 3, H, W], H and W multiples of 16."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise InvalidInputError(f"engine input must be uint8 [B, 3, H, W] RGB, got {got}")
    if images.shape[2] % multiple or images.shape[3] % multiple or 0 in images.shape:
        raise InvalidInputError(f"window sides must be positive multiples of {multiple}, got {images.shape[2:]}")
    return np.ascontiguousarray(images)


class Engine:
    """An opened engine directory: its manifest and one runner per graph."""

    def __init__(self, path: Path, manifest: EngineManifest, runners: Sequence[GraphRunner]) -> None:
        self.path = path
        self.manifest = manifest
        self.runners = tuple(runners)
        self.tissues: tuple[int, ...] = tuple(t for r in self.runners for t in r.spec.tissues)
        self.backend: str = manifest.backend
        self.precision: str = manifest.precision

    def runner(self, group: str) -> GraphRunner:
        """The runner of the graph for scale group ``group`` ("5x", "10x", "40x")."""
        for runner in self.runners:
            if runner.spec.scale_group == group:
                return runner
        have = [r.spec.scale_group or r.spec.name for r in self.runners]
        raise InvalidInputError(f"{self.path}: no graph for scale group {group!r}; it has {have}")

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, 3, H, W] -> float32 [B, T, H, W] for all of the engine's tissues."""
        images = check_images(images)
        # Graph after graph: each runner's infer already spreads one batch over its in-flight slots.
        outputs = [runner.infer(images) for runner in self.runners]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
        self.runners = ()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r}, backend={self.backend}, precision={self.precision}, tissues={self.tissues})"
