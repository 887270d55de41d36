"""The window plan of one scale group on one slide: pure geometry, no I/O.

The group's canvas is the slide resampled to the group's pixel size ``mpp``. It is cut into
cells of ``stride = window - overlap`` pixels; each cell is inferred from the window of
``window`` pixels centred on it (``overlap / 2`` pixels of context on every side, white beyond
the slide) and only the cell -- the window's valid centre -- is written to the canvas, so every
canvas pixel comes from exactly one window. Rows of cells are *bands*, processed in order; a
cell with no tissue under it is not in the plan (never read, never inferred: its pixels stay 0).

Coordinates: ``g_*`` canvas (group) pixels, ``l0_*`` level-0 slide pixels; one canvas pixel is
``scale = mpp / slide_mpp`` level-0 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.tissues import ScaleGroup

#: A group needing more than this upsampling (slide far coarser than the group) is skipped.
MAX_UPSAMPLE = 4.0


@dataclass(frozen=True)
class WindowSpec:
    """One window: where to read it and which part of the canvas it writes.

    ``l0_xy``: level-0 top-left of the window's region (may be negative); ``level`` and
    ``read_size`` (w, h): what to read there, to be resized to ``window`` x ``window``;
    ``cell``: (y0, y1, x0, x1) canvas rows/cols the window writes; ``crop``: (y0, x0) of that cell
    inside the window; ``t_rc``: (band, column) of the cell.
    """

    group: str
    t_rc: tuple[int, int]
    l0_xy: tuple[int, int]
    level: int
    read_size: tuple[int, int]
    window: int
    cell: tuple[int, int, int, int]
    crop: tuple[int, int]


@dataclass(frozen=True)
class GroupPlan:
    """All windows of one scale group, band by band (``bands[k]``: windows of cell row k)."""

    group: str
    task_ids: tuple[int, ...]
    mpp: float
    scale: float
    canvas: tuple[int, int]  # (height, width) in canvas pixels
    window: int
    overlap: int
    bands: tuple[tuple[WindowSpec, ...], ...]
    cells_total: int
    warnings: tuple[str, ...]

    @property
    def windows(self) -> int:
        return sum(len(b) for b in self.bands)


def plan_group(
    group: ScaleGroup,
    mpp: float,
    slide_mpp: float,
    l0_size: tuple[int, int],
    level_downsamples: tuple[float, ...],
    level_for,
    window: int,
    overlap: int,
    tissue: np.ndarray | None = None,
    tissue_mpp: float | None = None,
) -> GroupPlan:
    """Plan ``group`` at ``mpp`` um/px on a slide of ``l0_size`` (w, h) at ``slide_mpp``.

    ``level_for(mpp) -> level`` picks the pyramid level to read from; ``tissue`` (bool [h, w]
    at ``tissue_mpp``) limits the plan to cells with tissue (None: every cell).
    """
    if overlap < 0 or overlap % 2 or overlap >= window:
        raise InvalidInputError(f"overlap {overlap}: must be even, >= 0 and smaller than the window ({window})")
    scale = mpp / slide_mpp
    warnings = []
    if scale < 1 / 1.0001:
        warnings.append(f"{group.name}: the slide ({slide_mpp:.3g} um/px) is coarser than this group's "
                        f"{mpp:.3g} um/px; windows are upsampled {1 / scale:.2g}x, expect less accurate masks")
    width, height = (max(1, math.ceil(s / scale)) for s in l0_size)
    stride, margin = window - overlap, overlap // 2
    level = level_for(mpp)
    down = level_downsamples[level]
    read_side = max(1, math.ceil(window * scale / down - 1e-6))
    bands = []
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    for r in range(rows):
        band = []
        for c in range(cols):
            y0, x0 = r * stride, c * stride
            cell = (y0, min(y0 + stride, height), x0, min(x0 + stride, width))
            if tissue is not None and not _has_tissue(tissue, cell, mpp / tissue_mpp):
                continue
            l0_xy = (math.floor((x0 - margin) * scale), math.floor((y0 - margin) * scale))
            band.append(WindowSpec(group.name, (r, c), l0_xy, level, (read_side, read_side), window, cell,
                                   (margin, margin)))
        bands.append(tuple(band))
    return GroupPlan(group.name, group.task_ids, mpp, scale, (height, width), window, overlap, tuple(bands),
                     rows * cols, tuple(warnings))


def _has_tissue(tissue: np.ndarray, cell: tuple[int, int, int, int], factor: float) -> bool:
    """Any tissue pixel under ``cell`` (canvas px; ``factor`` = tissue px per canvas px)."""
    y0, y1, x0, x1 = cell
    ty0, tx0 = math.floor(y0 * factor), math.floor(x0 * factor)
    ty1, tx1 = max(ty0 + 1, math.ceil(y1 * factor)), max(tx0 + 1, math.ceil(x1 * factor))
    return bool(tissue[ty0:ty1, tx0:tx1].any())


def too_coarse(group_mpp: float, slide_mpp: float) -> bool:
    """True when the slide would have to be upsampled more than :data:`MAX_UPSAMPLE` times."""
    return slide_mpp / group_mpp > MAX_UPSAMPLE


def read_window(reader, spec: WindowSpec, resize: bool = True) -> np.ndarray:
    """uint8 [3, window, window] RGB of ``spec``: read at its level, resized to the window
    (bilinear, antialiased when shrinking); ``resize=False``: as read, [3, h, w] = ``read_size``
    (for an engine that resizes on its device)."""
    from PIL import Image

    image = reader.read_image(spec.l0_xy, spec.level, spec.read_size)
    if resize and image.size != (spec.window, spec.window):
        image = image.resize((spec.window, spec.window), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


class Occupancy:
    """Where a group's canvas can be nonzero: the cells of its plan (windows write only there,
    blended or not; a canvas read back from the group's mask file was made by the same plan).
    Writers skip every region this says is empty instead of reading it, so their cost follows the
    tissue, not the slide's area."""

    def __init__(self, plan: GroupPlan) -> None:
        self.stride = plan.window - plan.overlap
        height, width = plan.canvas
        self.width = width
        grid = np.zeros((math.ceil(height / self.stride), math.ceil(width / self.stride)), np.int64)
        for band in plan.bands:
            for spec in band:
                grid[spec.t_rc] = 1
        self._table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), np.int64)  # summed-area table
        self._table[1:, 1:] = grid.cumsum(0).cumsum(1)

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        """True when canvas rows [y0, y1) x cols [x0, x1) overlap a cell of the plan."""
        (r0, r1), (c0, c1) = self._cells(y0, y1, 0), self._cells(x0, x1, 1)
        t = self._table
        return bool(t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0])

    def columns(self, y0: int, y1: int) -> tuple[int, int] | None:
        """The canvas columns [x0, x1) spanning every cell that meets rows [y0, y1); None when none
        does (what a writer reading those rows needs to read)."""
        r0, r1 = self._cells(y0, y1, 0)
        t = self._table
        per_column = np.diff(t[r1] - t[r0])  # cells of those rows, per column of cells
        hit = np.flatnonzero(per_column)
        if not len(hit):
            return None
        return int(hit[0]) * self.stride, min(self.width, (int(hit[-1]) + 1) * self.stride)

    def rows(self, y0: int, y1: int) -> tuple[int, int] | None:
        """The canvas rows [y0', y1') within [y0, y1) of the cells that meet rows [y0, y1); None
        when none does."""
        r0, r1 = self._cells(y0, y1, 0)
        per_row = np.diff(self._table[r0:r1 + 1, -1])  # cells per row of cells
        hit = np.flatnonzero(per_row)
        if not len(hit):
            return None
        return max(y0, (r0 + int(hit[0])) * self.stride), min(y1, (r0 + int(hit[-1]) + 1) * self.stride)

    def _cells(self, v0: int, v1: int, axis: int) -> tuple[int, int]:
        """Cells [i0, i1) along ``axis`` (0 rows, 1 columns) that canvas pixels [v0, v1) meet,
        clamped to the grid."""
        n = self._table.shape[axis] - 1
        i0 = min(n, max(0, v0 // self.stride))
        return i0, min(n, max(i0, -(-v1 // self.stride)))
