"""Window outputs into the canvas: pure numpy, no I/O beyond the (memory-mapped) canvas.

Two ways (``SegmentSettings.blend``):

- ``"none"`` (centre crop): each window writes only its cell (its valid centre), thresholded, so
  a canvas pixel comes from exactly one window.
- ``"gaussian"``: each window's margins are weighted by a Gaussian importance map centred on the
  window (sigma = window / 8, as nnU-Net and MONAI's ``mode="gaussian"``) and summed over every
  window that covers a pixel; the pixel is foreground where the weighted mean margin is > 0.
  Neighbouring windows, which see different context (per-window GroupNorm statistics, globally
  pooled head conditioning), then meet in a smooth transition instead of a step at the cell edge.

Either way the result does not depend on the order windows finish in (blending: up to float
rounding; the pipeline adds them in plan order, so its bytes are reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from omniseg_rt.slide.plan import GroupPlan, WindowSpec

BLEND_MODES = ("gaussian", "none")
SIGMA_FRACTION = 1 / 8  # of the window side, as nnU-Net


def stitch_window(canvas: np.ndarray, spec: WindowSpec, margins: np.ndarray, scores: np.ndarray | None = None) -> None:
    """Write the cell of ``spec`` into ``canvas`` (uint8 [T, H, W], 0/255) and, when given, its
    scores into ``scores`` (uint8 [T, H, W], see :func:`to_scores`).

    ``margins``: float32 [T, window, window] foreground-minus-background logits of the window;
    a pixel is foreground where its margin is > 0.
    """
    y0, y1, x0, x1 = spec.cell
    cy, cx = spec.crop
    cell = margins[:, cy:cy + (y1 - y0), cx:cx + (x1 - x0)]
    canvas[:, y0:y1, x0:x1] = np.where(cell > 0, np.uint8(255), np.uint8(0))
    if scores is not None:
        scores[:, y0:y1, x0:x1] = to_scores(cell)


def to_scores(margins: np.ndarray) -> np.ndarray:
    """uint8 scores of float margins: 1 + round(254 * sigmoid(margin)), so 1..255 (0 stays "not
    inferred"); foreground margins (> 0) score at least 128. For ranking tissues against each other."""
    probability = 1.0 / (1.0 + np.exp(-np.clip(margins, -60.0, 60.0, dtype=np.float32)))
    return (1.0 + np.rint(254.0 * probability)).astype(np.uint8)


def importance_map(window: int, sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """float32 [window, window]: exp(-d^2 / 2 sigma^2) around the window's centre, sigma =
    ``sigma_fraction * window`` pixels; 1 at the centre point (between the middle pixels of an
    even window, so slightly less there) and > 0 everywhere."""
    sigma = sigma_fraction * window
    axis = np.exp(-0.5 * ((np.arange(window, dtype=np.float64) - (window - 1) / 2) / sigma) ** 2)
    weights = np.outer(axis, axis)
    return np.maximum(weights, np.finfo(np.float32).tiny).astype(np.float32)


class Blender:
    """Weighted accumulation of the windows of one group plan into the cells of ``bands``.

    A window covers its cell and ``overlap / 2`` pixels of each neighbour, so band ``b``'s cells
    are final once the windows of bands ``b - reach .. b + reach`` are added (``reach`` cell rows:
    1 while the overlap is below two thirds of the window). Only cells of ``bands`` that are in the
    plan get an accumulator (float32 [T, h, w] each, alive from the first window that touches them
    to :meth:`finish`), so memory is a few bands' worth of cells with tissue, never the slide.
    """

    def __init__(self, plan: GroupPlan, channels: int, bands: Iterable[int],
                 sigma_fraction: float = SIGMA_FRACTION, keep_weights: bool = False) -> None:
        self.plan = plan
        self.channels = channels
        self.weights = importance_map(plan.window, sigma_fraction)
        self.reach = math.ceil((plan.overlap // 2) / (plan.window - plan.overlap))
        self.cells = {spec.t_rc: spec.cell for b in set(bands) for spec in plan.bands[b]}
        self.sums: dict[tuple[int, int], np.ndarray] = {}
        self.weight_sums: dict[tuple[int, int], np.ndarray] = {}  # [h, w], only for scores
        self.keep_weights = keep_weights

    def bands_needed(self, bands: Iterable[int]) -> list[int]:
        """The bands whose windows must run for ``bands`` to be finished (sorted)."""
        rows = len(self.plan.bands)
        return sorted({n for b in bands for n in range(max(0, b - self.reach), min(rows, b + self.reach + 1))})

    def add(self, spec: WindowSpec, margins: np.ndarray) -> None:
        """Accumulate ``margins`` (float32 [T, window, window]) of the window ``spec``."""
        wy = spec.cell[0] - spec.crop[0]
        wx = spec.cell[2] - spec.crop[1]
        r, c = spec.t_rc
        for rr in range(r - self.reach, r + self.reach + 1):
            for cc in range(c - self.reach, c + self.reach + 1):
                cell = self.cells.get((rr, cc))
                if cell is None:
                    continue
                y0, y1, x0, x1 = cell
                top, bottom = max(y0, wy), min(y1, wy + spec.window)
                left, right = max(x0, wx), min(x1, wx + spec.window)
                if top >= bottom or left >= right:
                    continue
                total = self.sums.get((rr, cc))
                if total is None:
                    total = self.sums[(rr, cc)] = np.zeros((self.channels, y1 - y0, x1 - x0), np.float32)
                    if self.keep_weights:
                        self.weight_sums[(rr, cc)] = np.zeros((y1 - y0, x1 - x0), np.float32)
                rows, cols = slice(top - wy, bottom - wy), slice(left - wx, right - wx)
                here = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
                total[(slice(None), *here)] += margins[:, rows, cols] * self.weights[rows, cols]
                if self.keep_weights:
                    self.weight_sums[(rr, cc)][here] += self.weights[rows, cols]

    def finish(self, canvas: np.ndarray, band: int, scores: np.ndarray | None = None) -> None:
        """Threshold band ``band``'s accumulated cells into ``canvas`` (uint8 [T, H, W], 0/255),
        their weighted mean margins into ``scores`` when given (needs ``keep_weights``; see
        :func:`to_scores`), and free them. Call once every window of the bands it needs was added."""
        for spec in self.plan.bands[band]:
            total = self.sums.pop(spec.t_rc, None)
            if total is None:  # not one of this blender's bands
                continue
            y0, y1, x0, x1 = spec.cell
            canvas[:, y0:y1, x0:x1] = np.where(total > 0, np.uint8(255), np.uint8(0))
            if scores is not None:
                scores[:, y0:y1, x0:x1] = to_scores(total / self.weight_sums.pop(spec.t_rc))
