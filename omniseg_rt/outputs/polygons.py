"""Objects of a huge 2-D mask as shapely polygons, found in bands of rows.

Coordinates are mask pixels with the area convention: pixel (r, c) covers [c, c+1) x [r, r+1),
x to the right, y down. Two passes over the mask, memory bounded by one band plus a few numbers
per object plus the bounding box of the object being traced:

1. find the objects: label each band (8-connected), join labels that touch across band borders
   (an object may span many bands) and keep each object's bounding box, pixel count and seed
   (its top-left-most pixel, row-major);
2. trace them: per object, read its bounding box, keep the component holding the seed, trace
   the outline and holes (marching squares at 0.5), simplify, and offset the simplified outline
   so the polygon's area equals the object's pixel count (simplification alone cuts convex
   arcs inward by up to ``tolerance`` and would under-report areas by several per cent).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon
from skimage.measure import find_contours

from omniseg_rt.errors import InvalidInputError

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


@dataclass(frozen=True)
class _Objects:
    """Per-object arrays, all [N], sorted by seed: bbox rows [r0, r1), cols [c0, c1), count,
    seed pixel (row, col)."""

    r0: np.ndarray
    r1: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    count: np.ndarray
    seed_r: np.ndarray
    seed_c: np.ndarray


def _find_objects(mask: np.ndarray, band_rows: int, occupied=None) -> _Objects:
    """Pass 1: label band by band, join across band borders, aggregate per object."""
    height, width = mask.shape
    frags: list[np.ndarray] = []  # per band: int64 [n, 6] = r0, r1, c0, c1, count, seed key
    edges: list[np.ndarray] = []  # int64 [m, 2] pairs of fragment ids that touch across a border
    offset = 0
    prev_last: np.ndarray | None = None  # fragment ids (+1, 0 = background) of the row above
    for top in range(0, height, band_rows):
        if occupied is not None and not occupied(top, top + band_rows, 0, width):
            prev_last = None  # an empty band: nothing to join across its borders
            continue
        band = np.asarray(mask[top : top + band_rows]) != 0
        labels, n = ndimage.label(band, structure=_EIGHT, output=np.int32)
        if n:
            counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            rows = np.empty((n, 6), dtype=np.int64)
            for i, (rs, cs) in enumerate(ndimage.find_objects(labels)):
                seed_c = cs.start + int(np.argmax(labels[rs.start, cs] == i + 1))
                rows[i] = (top + rs.start, top + rs.stop, cs.start, cs.stop, counts[i],
                           (top + rs.start) * width + seed_c)
            frags.append(rows)
        first = np.where(labels[0] > 0, labels[0].astype(np.int64) + offset, 0)
        if prev_last is not None:
            for shift in (-1, 0, 1):  # 8-connected neighbours across the border
                a = prev_last[max(0, -shift) : width - max(0, shift)]
                b = first[max(0, shift) : width - max(0, -shift)]
                hit = (a > 0) & (b > 0)
                if hit.any():
                    edges.append(np.unique(np.stack([a[hit], b[hit]], axis=1), axis=0) - 1)
        prev_last = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + offset, 0)
        offset += n
    if offset == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Objects(empty, empty, empty, empty, empty, empty, empty)
    frag = np.concatenate(frags)
    pairs = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(offset, offset))
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp, kind="stable")
    starts = np.flatnonzero(np.diff(comp[order], prepend=-1))
    f = frag[order]
    r0, c0, seed = (np.minimum.reduceat(f[:, k], starts) for k in (0, 2, 5))
    r1, c1 = (np.maximum.reduceat(f[:, k], starts) for k in (1, 3))
    count = np.add.reduceat(f[:, 4], starts)
    by_seed = np.argsort(seed, kind="stable")
    seed = seed[by_seed]
    return _Objects(r0[by_seed], r1[by_seed], c0[by_seed], c1[by_seed], count[by_seed],
                    seed // width, seed % width)


def _ring_area(contour: np.ndarray) -> float:
    """Unsigned shoelace area of a closed contour, float [n, 2] (row, col)."""
    y, x = contour[:, 0], contour[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _trace(component: np.ndarray, row0: int, col0: int) -> Polygon:
    """Outline and holes of one 8-connected component (bool [h, w] crop whose pixel (0, 0) is
    mask pixel (row0, col0)) as a Polygon in mask pixel coordinates."""
    padded = np.zeros((component.shape[0] + 2, component.shape[1] + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = component
    # 'high': foreground pixels touching at a corner stay joined (8-connectivity).
    contours = find_contours(padded, 0.5, fully_connected="high")
    rings = [np.column_stack([c[:, 1] + (col0 - 0.5), c[:, 0] + (row0 - 0.5)]) for c in contours]
    outer = 0 if len(contours) == 1 else int(np.argmax([_ring_area(c) for c in contours]))
    holes = [r for i, r in enumerate(rings) if i != outer and len(r) >= 4]
    return Polygon(rings[outer], holes)


def _match_area(poly: Polygon, target: float) -> Polygon:
    """``poly`` offset (mitred buffer) so its area is ``target``; ``poly`` itself when that
    fails (an inward offset that would split it)."""
    best = poly
    for _ in range(3):  # Newton steps: dA/dd ~ perimeter
        error = target - best.area
        if abs(error) <= 1e-3 * target or best.length == 0:
            break
        moved = best.buffer(error / best.length, join_style="mitre", mitre_limit=2.0)
        if not isinstance(moved, Polygon) or moved.is_empty or not moved.is_valid:
            break
        best = moved
    return best


def _polygon(component: np.ndarray, row0: int, col0: int, count: int, tolerance: float) -> Polygon:
    """The object's final polygon: traced, made valid, simplified, area matched to ``count``."""
    traced = _trace(component, row0, col0)
    if not traced.is_valid:
        fixed = shapely.make_valid(traced)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon)]
        traced = max(parts, key=lambda g: g.area) if parts else traced
    shape = traced
    if tolerance > 0:
        simple = _simplify(traced, tolerance)
        if isinstance(simple, Polygon) and simple.is_valid and not simple.is_empty:
            shape = simple
    return _match_area(shape, float(count))


def _simplify(traced: Polygon, tolerance: float) -> Polygon:
    """Douglas-Peucker within ``tolerance`` keeping topology, except that a ring cut down to a
    triangle (a one-pixel diamond, a tiny hole) keeps its traced form: offsetting a thin
    triangle back to the right area would make a spike."""
    simple = traced.simplify(tolerance, preserve_topology=True)
    if not isinstance(simple, Polygon):
        return traced
    before = [traced.exterior, *traced.interiors]
    after = [simple.exterior, *simple.interiors]
    if len(before) != len(after):
        return traced
    if all(len(ring.coords) >= 5 for ring in after):
        return simple
    rings = [a if len(a.coords) >= 5 else b for a, b in zip(after, before)]
    return Polygon(rings[0], rings[1:])


def mask_objects(
    mask: np.ndarray, *, band_rows: int = 2048, tolerance: float = 1.0, occupied=None,
    pool: Executor | None = None, in_flight: int = 8,
) -> Iterator[tuple[Polygon, int]]:
    """Every 8-connected object of a 2-D mask as (Polygon, pixel count), ordered by its
    top-left-most pixel (row-major).

    ``mask``: [H, W] array, nonzero = foreground (uint8 0/255; a ``np.memmap`` slice is read in
    pieces). Polygons are in mask pixels (area convention in the module docstring), holes kept,
    simplified within ``tolerance`` pixels (0 = no simplification), valid, with area equal to
    the pixel count (to 0.1 %). ``band_rows``: rows per band of the first pass; ``occupied(y0,
    y1, x0, x1) -> bool``: False where the mask is known to be 0 (those bands are not read).
    ``pool``: an executor (processes: tracing is Python-bound) that traces chunks of objects, at
    most ``in_flight`` chunks ahead; the same polygons in the same order as without.
    """
    if getattr(mask, "ndim", None) != 2:
        raise InvalidInputError(f"mask must be a 2-D [H, W] array; got shape {getattr(mask, 'shape', '?')}")
    if band_rows < 1:
        raise InvalidInputError(f"band_rows must be >= 1; got {band_rows}")
    if tolerance < 0:
        raise InvalidInputError(f"tolerance must be >= 0 pixels; got {tolerance}")
    if 0 in mask.shape:
        return
    found = _find_objects(mask, band_rows, occupied)
    log.debug("%d objects in a %dx%d mask", len(found.count), mask.shape[1], mask.shape[0])
    pieces = _components(mask, found)
    if pool is None:
        for component, r0, c0, count in pieces:
            yield _polygon(component, r0, c0, count, tolerance), count
        return
    pending: deque = deque()  # (counts, future of their polygons), at most ``in_flight`` chunks
    try:
        for chunk in iter(lambda: list(itertools.islice(pieces, CHUNK)), []):
            pending.append(([c[3] for c in chunk], pool.submit(_polygons, chunk, tolerance)))
            if len(pending) >= in_flight:
                counts, future = pending.popleft()
                yield from zip(future.result(), counts)
        while pending:
            counts, future = pending.popleft()
            yield from zip(future.result(), counts)
    finally:
        for _, future in pending:
            future.cancel()


CHUNK = 64  # objects per task of a tracing pool


def _components(mask: np.ndarray, found: _Objects) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """Each object's pixels: (bool crop, its top row, its left column, pixel count), in order."""
    for i in range(len(found.count)):
        r0, r1, c0, c1 = (int(a[i]) for a in (found.r0, found.r1, found.c0, found.c1))
        component = np.asarray(mask[r0:r1, c0:c1]) != 0
        if np.count_nonzero(component) != found.count[i]:  # other objects in the box
            labels, _ = ndimage.label(component, structure=_EIGHT, output=np.int32)
            component = labels == labels[found.seed_r[i] - r0, found.seed_c[i] - c0]
        yield component, r0, c0, int(found.count[i])


def _polygons(chunk: list[tuple[np.ndarray, int, int, int]], tolerance: float) -> list[Polygon]:
    """:func:`_polygon` of a chunk of components (what a tracing process runs)."""
    return [_polygon(component, r0, c0, count, tolerance) for component, r0, c0, count in chunk]
