"""Where a runner's window outputs live while they are stitched, and what crosses to the host.

The slide pipeline stitches margins (foreground minus background logit, [T, H, W] per window)
into masks. A runner hands them out as arrays of its own kind (``runner.arrays``): numpy on the
host for the CPU backends (:data:`HOST`), tensors on the GPU for the torch backend on CUDA. The
stitcher does its arithmetic (crop, weighted sums) with the array's own operators, which numpy and
torch share, and asks the runner's ``arrays`` for the few things that differ: new buffers, and the
uint8 masks and scores that cross to the host. So a GPU engine ships uint8 masks of finished cells,
never float margins; a CPU engine does the same work on the host.

Masks: 255 where the value is > 0, else 0. Scores: ``1 + round(254 * sigmoid(value))``, so 1..255
(0 stays "not inferred") and every foreground value scores at least 128; for ranking tissues
against each other (``segment --exclusive``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

SCORE_CLIP = 60.0  # sigmoid is 0 or 1 in float32 beyond this; clipping keeps exp() finite


class Arrays(Protocol):
    """The operations the stitcher needs beyond an array's own slicing and arithmetic."""

    def asarray(self, values: np.ndarray) -> Any:
        """A float32 host array as this kind of array (a weight map, once)."""

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A float32 accumulator of ``shape``, zeros."""

    def masks(self, values: Sequence[Any]) -> list[np.ndarray]:
        """uint8 host masks (0/255) of ``values`` (each any shape), in one transfer."""

    def scores(self, values: Sequence[Any]) -> list[np.ndarray]:
        """uint8 host scores of ``values`` (see the module docstring), in one transfer."""


def to_scores(margins: np.ndarray) -> np.ndarray:
    """uint8 scores of float margins (numpy): 1 + round(254 * sigmoid(margin))."""
    probability = 1.0 / (1.0 + np.exp(-np.clip(margins, -SCORE_CLIP, SCORE_CLIP, dtype=np.float32)))
    return (1.0 + np.rint(254.0 * probability)).astype(np.uint8)


class HostArrays:
    """numpy arrays in host memory: what every CPU backend's outputs are."""

    def asarray(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def masks(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.where(v > 0, np.uint8(255), np.uint8(0)) for v in values]

    def scores(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [to_scores(v) for v in values]


HOST = HostArrays()


def split_flat(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Cut one flat host array into arrays of ``shapes`` (what a device packed into one transfer)."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out
