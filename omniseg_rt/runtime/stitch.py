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

The arithmetic is written with the operators numpy arrays and torch tensors share, so it runs
where the runner's outputs are (``engines/arrays.py``): on the GPU for a GPU engine, which then
ships uint8 masks of finished cells, never float margins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from omniseg_rt.engines.arrays import HOST, Arrays
from omniseg_rt.slide.plan import GroupPlan, WindowSpec

BLEND_MODES = ("gaussian", "none")
SIGMA_FRACTION = 1 / 8  # of the window side, as nnU-Net


def stitch_window(canvas: np.ndarray, spec: WindowSpec, margins: np.ndarray, scores: np.ndarray | None = None) -> None:
    """Write the cell of ``spec`` into ``canvas`` (uint8 [T, H, W], 0/255) and, when given, its
    scores into ``scores`` (uint8 [T, H, W], see ``engines.arrays.to_scores``).

    ``margins``: float32 [T, window, window] foreground-minus-background logits of the window;
    a pixel is foreground where its margin is > 0.
    """
    stitch_windows(canvas, [spec], margins[None], list(range(len(margins))), scores)


def stitch_windows(canvas: np.ndarray, specs: Sequence[WindowSpec], outputs, channels: list[int],
                   scores: np.ndarray | None = None, arrays: Arrays = HOST) -> None:
    """Centre crops of a batch: each window's cell of ``channels`` into ``canvas`` (and ``scores``).

    ``outputs``: margins [B, T', window, window] as ``arrays`` arrays (host numpy, or a runner's
    device tensors: then only the uint8 cells cross to the host, in one transfer per batch)."""
    cells = []
    for i, spec in enumerate(specs):
        y0, y1, x0, x1 = spec.cell
        cy, cx = spec.crop
        cells.append(outputs[i][:, cy:cy + (y1 - y0), cx:cx + (x1 - x0)][channels])
    for spec, mask in zip(specs, arrays.masks(cells)):
        y0, y1, x0, x1 = spec.cell
        canvas[:, y0:y1, x0:x1] = mask
    if scores is not None:
        for spec, score in zip(specs, arrays.scores(cells)):
            y0, y1, x0, x1 = spec.cell
            scores[:, y0:y1, x0:x1] = score


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
                 sigma_fraction: float = SIGMA_FRACTION, keep_weights: bool = False, arrays: Arrays = HOST) -> None:
        self.plan = plan
        self.channels = channels
        self.arrays = arrays
        self.weights = arrays.asarray(importance_map(plan.window, sigma_fraction))
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
        """Accumulate ``margins`` ([T, window, window], ``arrays`` kind) of the window ``spec``."""
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
                    total = self.sums[(rr, cc)] = self.arrays.zeros((self.channels, y1 - y0, x1 - x0))
                    if self.keep_weights:
                        self.weight_sums[(rr, cc)] = self.arrays.zeros((y1 - y0, x1 - x0))
                rows, cols = slice(top - wy, bottom - wy), slice(left - wx, right - wx)
                here = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
                total[(slice(None), *here)] += margins[:, rows, cols] * self.weights[rows, cols]
                if self.keep_weights:
                    self.weight_sums[(rr, cc)][here] += self.weights[rows, cols]

    def finish(self, canvas: np.ndarray, band: int, scores: np.ndarray | None = None) -> None:
        """Threshold band ``band``'s accumulated cells into ``canvas`` (uint8 [T, H, W], 0/255),
        their weighted mean margins into ``scores`` when given (needs ``keep_weights``; see
        ``engines.arrays.to_scores``), and free them. Call once every window of the bands it needs was added.
        The band's masks (and scores) cross to the host in one transfer."""
        specs = [spec for spec in self.plan.bands[band] if spec.t_rc in self.sums]  # this blender's cells
        totals = [self.sums.pop(spec.t_rc) for spec in specs]
        for spec, mask in zip(specs, self.arrays.masks(totals)):
            y0, y1, x0, x1 = spec.cell
            canvas[:, y0:y1, x0:x1] = mask
        if scores is not None:
            means = [total / self.weight_sums.pop(spec.t_rc) for spec, total in zip(specs, totals)]
            for spec, score in zip(specs, self.arrays.scores(means)):
                y0, y1, x0, x1 = spec.cell
                scores[:, y0:y1, x0:x1] = score
