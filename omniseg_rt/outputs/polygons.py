"""Objects of a huge 2-D mask as shapely polygons, found in bands of rows.

Coordinates are mask pixels with the area convention: pixel (r, c) covers [c, c+1) x [r, r+1),
x to the right, y down. Two passes over the mask, memory bounded by one band plus a few numbers
per object plus the bounding box of an object that spans bands:

1. find the objects: label each band (8-connected), join labels that touch across band borders
   (an object may span many bands) and keep each object's bounding box, pixel count and seed
   (its top-left-most pixel, row-major);
2. trace them, band by band: every object that lies within one band is traced with all the others
   of its band at once (marching squares at 0.5, vectorised: each boundary cell's segments,
   joined into rings by pointer jumping); an object that spans bands is read by its bounding box
   and traced the same way. Then, again all at once: simplify (Douglas-Peucker; topology-preserving
   where that would break a ring) and offset each simplified outline so the polygon's area equals
   the object's pixel count (simplification alone cuts convex arcs inward by up to ``tolerance``
   and would under-report areas by several per cent).

A ring starts at its smallest (y, x) vertex and keeps the foreground on its left, whatever band
or box it was traced in, so banding never changes a polygon.
"""

from __future__ import annotations

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

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.outputs.regions import occupied_columns, read_occupied

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


@dataclass(frozen=True)
class _Band:
    """Pass 2's work in one band: rows [top, top + rows); ``label_object[label]``: the object a
    band label (1..n) is, where that object lies wholly in this band (-1 elsewhere, and for 0);
    ``spanning``: objects seeded in this band that reach into others; columns [left, right): the
    part of the band that was labelled (where the mask can be nonzero)."""

    top: int
    label_object: np.ndarray
    spanning: np.ndarray
    left: int
    right: int


def _find_objects(mask: np.ndarray, band_rows: int, occupied=None) -> tuple[_Objects, list[_Band]]:
    """Pass 1: label band by band, join across band borders, aggregate per object; and per band
    with objects, what pass 2 traces there."""
    height, width = mask.shape
    frags: list[np.ndarray] = []  # per band: int64 [n, 6] = r0, r1, c0, c1, count, seed key
    tops: list[tuple[int, int, int, int, int]] = []  # per band with fragments: top, left, right, first id, count
    edges: list[np.ndarray] = []  # int64 [m, 2] pairs of fragment ids that touch across a border
    offset = 0
    prev_last: np.ndarray | None = None  # fragment ids (+1, 0 = background) of the row above
    for top in range(0, height, band_rows):
        span = occupied_columns(occupied, top, top + band_rows, width)
        if span is None:
            prev_last = None  # an empty band: nothing to join across its borders
            continue
        left, right = span
        band = _read_band(mask, top, band_rows, left, right, occupied)
        labels, n = _label(band)
        if n:
            frags.append(_fragments(labels, n, top, left, width))
            tops.append((top, left, right, offset, n))
        first = np.zeros(width, np.int64)  # full-width rows: the next band may span other columns
        first[left:right] = np.where(labels[0] > 0, labels[0].astype(np.int64) + offset, 0)
        if prev_last is not None:
            for shift in (-1, 0, 1):  # 8-connected neighbours across the border
                a = prev_last[max(0, -shift) : width - max(0, shift)]
                b = first[max(0, shift) : width - max(0, -shift)]
                hit = (a > 0) & (b > 0)
                if hit.any():
                    edges.append(np.unique(np.stack([a[hit], b[hit]], axis=1), axis=0) - 1)
        prev_last = np.zeros(width, np.int64)
        prev_last[left:right] = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + offset, 0)
        offset += n
    if offset == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Objects(empty, empty, empty, empty, empty, empty, empty), []
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
    rank = np.empty_like(by_seed)
    rank[by_seed] = np.arange(len(by_seed))
    frag_object = rank[comp]  # each fragment's object (seed order)
    fragments = np.bincount(comp)  # per component
    whole = fragments[comp] == 1  # the fragment is its whole object
    seed = seed[by_seed]
    found = _Objects(r0[by_seed], r1[by_seed], c0[by_seed], c1[by_seed], count[by_seed], seed // width, seed % width)
    spanning = np.flatnonzero(fragments[by_seed] > 1)
    spanning_band = found.seed_r[spanning] // band_rows
    bands = []
    for top, left, right, first_id, n in tops:
        ids = slice(first_id, first_id + n)
        label_object = np.concatenate([[-1], np.where(whole[ids], frag_object[ids], -1)])
        bands.append(_Band(top, label_object, spanning[spanning_band == top // band_rows], left, right))
    return found, bands


def _label(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of bool [h, w]: (labels int32 [h, w], 0 = background; count). The
    same input always gets the same labels. (scipy's own output array: asking it for
    ``output=np.int32`` made labelling 1.7x slower.)"""
    return ndimage.label(pixels, structure=_EIGHT)


def _fragments(labels: np.ndarray, n: int, top: int, left: int, width: int) -> np.ndarray:
    """int64 [n, 6] per label 1..n of a band whose pixel (0, 0) is mask pixel (``top``, ``left``):
    rows [r0, r1), cols [c0, c1), pixel count, seed key (row * width + col of its first pixel,
    row-major; ``width``: the mask's)."""
    flat = labels.ravel()
    pixels = np.flatnonzero(flat)
    first = np.full(n + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, flat[pixels], pixels)  # pixels ascend: the first one of each label
    rows = np.empty((n, 6), dtype=np.int64)
    boxes = ndimage.find_objects(labels)
    rows[:, 0] = [rs.start for rs, _ in boxes]
    rows[:, 1] = [rs.stop for rs, _ in boxes]
    rows[:, 2] = [cs.start for _, cs in boxes]
    rows[:, 3] = [cs.stop for _, cs in boxes]
    rows[:, :2] += top
    rows[:, 2:4] += left
    rows[:, 4] = np.bincount(flat[pixels], minlength=n + 1)[1:]
    seed_r, seed_c = np.divmod(first[1:], labels.shape[1])
    rows[:, 5] = (top + seed_r) * width + left + seed_c
    return rows


# ---------------------------------------------------------------- tracing (marching squares)
#
# A cell is 2 x 2 pixel centres, corners a b / c d, code 8a + 4b + 2c + d; its edges T (a-b),
# B (c-d), L (a-c), R (b-d) are crossed where their corners differ, at the edge's midpoint (a
# pixel's side in the area convention). Vertices are keyed by doubled coordinates
# (2y + 2) * _K + (2x + 2), so key order is (y, x) order.

_K = np.int64(1 << 24)
_EDGE_DY2 = np.array([-1, 1, 0, 0], np.int64)  # T B L R, relative to the cell's corner a
_EDGE_DX2 = np.array([0, 0, -1, 1], np.int64)


def _segment_table() -> np.ndarray:
    """int8 [16, 2, 2]: per cell code, up to two segments (from edge, to edge; -1: none), each
    with the foreground on its left (positive cross product, x right and y down). In the two
    saddle cells the segments cut off the background corners, so diagonal foreground stays joined
    (8-connected objects, as pass 1 labels them)."""
    corners = {"a": (0.0, 0.0), "b": (1.0, 0.0), "c": (0.0, 1.0), "d": (1.0, 1.0)}  # (x, y)
    middle = [(0.5, 0.0), (0.5, 1.0), (0.0, 0.5), (1.0, 0.5)]  # T B L R
    ends = [("a", "b"), ("c", "d"), ("a", "c"), ("b", "d")]
    table = np.full((16, 2, 2), -1, np.int8)
    for code in range(16):
        value = {"a": code >> 3 & 1, "b": code >> 2 & 1, "c": code >> 1 & 1, "d": code & 1}
        crossed = [e for e, (p, q) in enumerate(ends) if value[p] != value[q]]
        if len(crossed) == 4:  # saddle: cut off b and c (a, d foreground) or a and d
            pairs = [(0, 3), (2, 1)] if value["a"] else [(0, 2), (3, 1)]
        else:
            pairs = [tuple(crossed)] if crossed else []
        for k, (e1, e2) in enumerate(pairs):
            (x1, y1), (x2, y2) = middle[e1], middle[e2]
            side = {n: (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) for n, (x, y) in corners.items()}
            left = [n for n in side if side[n] > 0]
            right = [n for n in side if side[n] < 0]
            few = left if len(left) <= len(right) else right  # the corners cut off: all of one value
            on_left = (value[few[0]] == 1) == (few is left)
            table[code, k] = (e1, e2) if on_left else (e2, e1)
    return table


_SEGMENTS = _segment_table()


@dataclass(frozen=True)
class _Rings:
    """Closed outlines, not repeating their first vertex: ``xy`` float64 [V, 2] (mask pixels,
    area convention), ring r = xy[start[r]:start[r + 1]]; ``pixel`` int64 [R, 2] a foreground
    pixel (row, col, local to the traced array) beside each ring; ``area`` float64 [R] signed
    (> 0: an outline, < 0: a hole). Rings in order of their first vertex."""

    xy: np.ndarray
    start: np.ndarray
    pixel: np.ndarray
    area: np.ndarray


def _rings(fg: np.ndarray, row0: int, col0: int) -> _Rings:
    """Every outline and hole of the foreground of ``fg`` (bool [h, w], whose pixel (0, 0) is mask
    pixel (row0, col0); outside it counts as background)."""
    h, w = fg.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = fg
    code = (padded[:-1, :-1] << 3) | (padded[:-1, 1:] << 2) | (padded[1:, :-1] << 1) | padded[1:, 1:]
    cells = np.flatnonzero((code != 0) & (code != 15))
    segments = _SEGMENTS[code.ravel()[cells]]  # [n, 2, 2]
    i, j = np.divmod(cells, w + 1)
    two = segments[:, 1, 0] >= 0  # saddles
    i, j = np.concatenate([i, i[two]]), np.concatenate([j, j[two]])
    frm = np.concatenate([segments[:, 0, 0], segments[two, 1, 0]]).astype(np.int64)
    to = np.concatenate([segments[:, 0, 1], segments[two, 1, 1]]).astype(np.int64)
    # corner a of cell (i, j) is padded pixel (i, j), mask pixel (row0 + i - 1, col0 + j - 1),
    # centred at (col0 + j - 0.5, row0 + i - 0.5): the cell's centre is (col0 + j, row0 + i).
    y2 = 2 * (row0 + i.astype(np.int64)) + 2  # the centre, doubled and shifted as keys are
    x2 = 2 * (col0 + j.astype(np.int64)) + 2
    start = (y2 + _EDGE_DY2[frm]) * _K + x2 + _EDGE_DX2[frm]
    end = (y2 + _EDGE_DY2[to]) * _K + x2 + _EDGE_DX2[to]
    if len(start) == 0:
        return _Rings(np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros((0, 2), np.int64), np.zeros(0))
    by_key = np.argsort(start)
    key = start[by_key]
    succ = np.searchsorted(key, end[by_key])  # every vertex is the start of one segment and the end of one
    ring, n = _cycle_minimum(succ), len(key)
    order = np.lexsort((-_steps_to_last(succ, ring), ring))  # ring by ring, each from its smallest vertex
    key, ring = key[order], ring[order]
    first = np.flatnonzero(np.diff(ring, prepend=-1))
    y, x = (key // _K - 2) / 2.0, (key % _K - 2) / 2.0
    nxt = np.arange(1, n + 1)
    nxt[np.append(first[1:], n) - 1] = first
    area = np.add.reduceat(x * y[nxt] - x[nxt] * y, first) / 2
    return _Rings(np.column_stack([x, y]), np.append(first, n), _beside(key[first], fg, row0, col0), area)


def _cycle_minimum(succ: np.ndarray) -> np.ndarray:
    """For a permutation made of cycles (``succ`` int64 [n]), each element's cycle minimum, by
    pointer jumping: after k rounds ``least[x]`` is the minimum of the 2^k elements from x on;
    when a round changes nothing, every window already spans its cycle."""
    least, jump = np.arange(len(succ)), succ
    while True:
        nxt = np.minimum(least, least[jump])
        if np.array_equal(nxt, least):
            return least
        least, jump = nxt, jump[jump]


def _steps_to_last(succ: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Each element's steps to the last element of its cycle, the cycle being cut before its
    element ``first[x]`` (list ranking by pointer jumping: ``steps[x]`` counts the steps from x
    to ``link[x]``, both doubling each round)."""
    n = len(succ)
    link = np.where(succ == first, np.arange(n), succ)  # the last element points to itself
    steps = (link != np.arange(n)).astype(np.int64)
    while True:
        further = link[link]
        if np.array_equal(further, link):
            return steps
        steps += steps[link]
        link = further


def _beside(key: np.ndarray, fg: np.ndarray, row0: int, col0: int) -> np.ndarray:
    """int64 [R, 2]: the foreground pixel (row, col; local to ``fg``) on one side of each vertex
    ``key``: a vertex halfway down a pixel's side lies between two pixels of a row, otherwise
    between two pixels of a column."""
    y2, x2 = key // _K - 2, key % _K - 2
    across = y2 % 2 == 1  # y on a pixel's centre row: the pixels left and right of x
    r = np.where(across, (y2 - 1) // 2, y2 // 2 - 1) - row0
    c = np.where(across, x2 // 2 - 1, (x2 - 1) // 2) - col0
    r2, c2 = np.where(across, r, r + 1), np.where(across, c + 1, c)
    h, w = fg.shape
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    hit = np.zeros(len(key), bool)
    hit[inside] = fg[r[inside], c[inside]]
    return np.column_stack([np.where(hit, r, r2), np.where(hit, c, c2)])


def _polygons(rings: _Rings, ring_object: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rings -> one Polygon per object: ``ring_object`` int64 [R] (-1: leave the ring out).
    Returns (objects, ascending; Polygon [M]): outline first, holes in ring order."""
    keep = ring_object >= 0
    if not keep.any():
        return np.zeros(0, np.int64), np.zeros(0, object)
    counts = np.diff(rings.start)
    lines = shapely.linearrings(rings.xy[np.repeat(keep, counts)],
                                indices=np.repeat(np.arange(keep.sum()), counts[keep]))
    obj, hole = ring_object[keep], rings.area[keep] < 0
    order = np.lexsort((hole, obj))  # stable: holes stay in ring order
    objects, index = np.unique(obj[order], return_inverse=True)
    return objects, shapely.polygons(lines[order], indices=index)


# ---------------------------------------------------------------- finishing, all at once


def _finish(traced: np.ndarray, counts: np.ndarray, tolerance: float) -> np.ndarray:
    """Polygon [N] (traced: valid by construction) -> simplified within ``tolerance``, offset to
    area ``counts``."""
    target = counts.astype(np.float64)
    shapes = _match_areas(_simplify_all(traced, tolerance) if tolerance > 0 else traced, target)
    error = np.abs(shapely.area(shapes) - target)
    off = np.flatnonzero(error > 1e-3 * target)
    if tolerance > 0 and len(off):  # a simplified neck that an inward offset would cut: unsimplified
        retry = _match_areas(traced[off], target[off])
        better = np.abs(shapely.area(retry) - target[off]) < error[off]
        shapes[off[better]] = retry[better]
    return shapes


def _simplify_all(traced: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker within ``tolerance``, ring by ring; a ring cut below four corners (a
    one-pixel diamond, a tiny hole, a speck that would vanish) keeps its traced form: offsetting a
    thin triangle back to the right area would make a spike. A polygon whose simplified rings
    cross is simplified again by the topology-preserving simplifier, alone."""
    rings, index = shapely.get_rings(traced, return_index=True)
    simple = shapely.simplify(rings, tolerance, preserve_topology=False)
    short = (shapely.get_type_id(simple) != 2) | (shapely.get_num_coordinates(simple) < 5)
    out = shapely.polygons(np.where(short, rings, simple), indices=index)
    for k in np.flatnonzero(~shapely.is_valid(out)):
        out[k] = _simplify_one(traced[k], tolerance)
    return out


def _simplify_one(traced: Polygon, tolerance: float) -> Polygon:
    """The topology-preserving simplification of one polygon, with the short-ring rule of
    :func:`_simplify_all`; ``traced`` itself when no valid polygon with all its rings comes out."""
    simple = traced.simplify(tolerance, preserve_topology=True)
    if not isinstance(simple, Polygon) or simple.is_empty:
        return traced
    before = [traced.exterior, *traced.interiors]
    after = [simple.exterior, *simple.interiors]
    if len(before) != len(after):
        return traced
    if any(len(ring.coords) < 5 for ring in after):
        rings = [a if len(a.coords) >= 5 else b for a, b in zip(after, before)]
        simple = Polygon(rings[0], rings[1:])
    return simple if simple.is_valid and not simple.is_empty else traced


def _match_areas(shapes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each polygon offset (mitred buffer) so its area is ``target`` (to 0.1 %), by up to three
    Newton steps (dA/dd ~ perimeter); a polygon whose next offset fails (an inward offset that
    would split it) keeps its last good shape."""
    best = shapes.copy()
    active = np.ones(len(best), bool)
    for _ in range(3):
        error = target - shapely.area(best)
        length = shapely.length(best)
        active &= (np.abs(error) > 1e-3 * target) & (length > 0)
        moving = np.flatnonzero(active)
        if not len(moving):
            break
        moved = shapely.buffer(best[moving], error[moving] / length[moving], join_style="mitre", mitre_limit=2.0)
        ok = (shapely.get_type_id(moved) == 3) & ~shapely.is_empty(moved) & shapely.is_valid(moved)
        best[moving[ok]] = moved[ok]
        active[moving[~ok]] = False
    return best


# ---------------------------------------------------------------- the two passes


def mask_objects(
    mask: np.ndarray, *, band_rows: int = 2048, tolerance: float = 1.0, occupied=None,
    pool: Executor | None = None, in_flight: int = 8,
) -> Iterator[tuple[Polygon, int]]:
    """Every 8-connected object of a 2-D mask as (Polygon, pixel count), ordered by its
    top-left-most pixel (row-major).

    ``mask``: [H, W] array, nonzero = foreground (uint8 0/255; a ``np.memmap`` slice is read in
    pieces). Polygons are in mask pixels (area convention in the module docstring), holes kept,
    simplified within ``tolerance`` pixels (0 = no simplification), valid, with area equal to
    the pixel count (to 0.1 %). ``band_rows``: rows per band; ``occupied(y0, y1, x0, x1) -> bool``:
    False where the mask is known to be 0 (those bands are not read). ``pool``: an executor that
    traces bands (processes: the vectorised work holds the GIL between numpy and GEOS calls), at
    most ``in_flight`` bands ahead; the same polygons in the same order as without.
    """
    for _, polygon, count in masks_objects([(mask, band_rows, occupied)], tolerance=tolerance, pool=pool,
                                           in_flight=in_flight):
        yield polygon, count


def masks_objects(
    masks: list[tuple[np.ndarray, int, object]], *, tolerance: float = 1.0, pool: Executor | None = None,
    in_flight: int = 8,
) -> Iterator[tuple[int, Polygon, int]]:
    """:func:`mask_objects` of several masks, given as (mask, band_rows, occupied or None), as
    (mask index, Polygon, pixel count): mask after mask, each in its own order. With a ``pool``,
    the look-ahead of ``in_flight`` bands runs across masks (masks of one band each, such as a
    group's tissues, are traced at once), and the next mask's first pass runs here meanwhile."""
    for mask, band_rows, _ in masks:
        if getattr(mask, "ndim", None) != 2:
            raise InvalidInputError(f"mask must be a 2-D [H, W] array; got shape {getattr(mask, 'shape', '?')}")
        if band_rows < 1:
            raise InvalidInputError(f"band_rows must be >= 1; got {band_rows}")
    if tolerance < 0:
        raise InvalidInputError(f"tolerance must be >= 0 pixels; got {tolerance}")
    jobs = ((k, job) for k, (mask, band_rows, occupied) in enumerate(masks)
            for job in _jobs(mask, band_rows, occupied))
    if pool is None:
        for k, job in jobs:
            yield from ((k, polygon, count) for polygon, count in _trace_band(*job, tolerance))
        return
    pending: deque = deque()  # (mask index, future of a band's objects), at most ``in_flight``
    try:
        for k, job in jobs:
            pending.append((k, pool.submit(_trace_band, *job, tolerance)))
            if len(pending) >= in_flight:
                k, future = pending.popleft()
                yield from ((k, polygon, count) for polygon, count in future.result())
        while pending:
            k, future = pending.popleft()
            yield from ((k, polygon, count) for polygon, count in future.result())
    finally:
        for _, future in pending:
            future.cancel()


def _jobs(mask: np.ndarray, band_rows: int, occupied) -> Iterator[tuple]:
    """Pass 1 over ``mask``, then the band jobs of pass 2 (:func:`_band_job`), one at a time."""
    if 0 in mask.shape:
        return
    found, bands = _find_objects(mask, band_rows, occupied)
    log.debug("%d objects in a %dx%d mask", len(found.count), mask.shape[1], mask.shape[0])
    for band in bands:
        yield _band_job(mask, band, band_rows, found, occupied)


def _read_band(mask: np.ndarray, top: int, band_rows: int, left: int, right: int, occupied) -> np.ndarray:
    """bool [rows, right - left]: the band's pixels (its rows from ``top``, cut at the mask's
    bottom) across columns [left, right), where ``occupied`` says they can be nonzero."""
    return read_occupied(mask, top, min(top + band_rows, mask.shape[0]), left, right, occupied)


def _band_job(mask: np.ndarray, band: _Band, band_rows: int, found: _Objects, occupied) -> tuple:
    """What :func:`_trace_band` needs for one band: (the band's pixels -- the columns pass 1
    labelled --, or None when no object lies wholly in it; their top row and left column;
    ``label_object``; the counts of the objects it names; the components of its spanning objects
    as (object, bool crop, top row, left col))."""
    pixels = None
    if (band.label_object >= 0).any():
        pixels = _read_band(mask, band.top, band_rows, band.left, band.right, occupied)
    crops = []
    for k in band.spanning:
        r0, r1, c0, c1 = (int(a[k]) for a in (found.r0, found.r1, found.c0, found.c1))
        component = np.asarray(mask[r0:r1, c0:c1]) != 0
        if np.count_nonzero(component) != found.count[k]:  # other objects in the box
            labels, _ = _label(component)
            component = labels == labels[found.seed_r[k] - r0, found.seed_c[k] - c0]
        crops.append((int(k), component, r0, c0))
    named = np.concatenate([band.label_object[band.label_object >= 0], band.spanning])
    counts = dict(zip(named.tolist(), found.count[named].tolist()))
    return pixels, band.top, band.left, band.label_object, counts, crops


def _trace_band(pixels: np.ndarray | None, top: int, left: int, label_object: np.ndarray, counts: dict[int, int],
                crops: list, tolerance: float) -> list[tuple[Polygon, int]]:
    """One band's objects as (Polygon, pixel count), in object order (what a tracing process
    runs): the objects within the band traced together, then each spanning one in its box."""
    objects, traced = [np.zeros(0, np.int64)], [np.zeros(0, object)]
    if pixels is not None:
        labels, _ = _label(pixels)  # the labels of pass 1
        rings = _rings(pixels, top, left)
        o, t = _polygons(rings, label_object[labels[rings.pixel[:, 0], rings.pixel[:, 1]]])
        objects.append(o)
        traced.append(t)
    for k, component, r0, c0 in crops:
        rings = _rings(component, r0, c0)
        o, t = _polygons(rings, np.full(len(rings.area), k))
        objects.append(o)
        traced.append(t)
    objects, traced = np.concatenate(objects), np.concatenate(traced)
    order = np.argsort(objects, kind="stable")
    objects, traced = objects[order], traced[order]
    n = np.array([counts[k] for k in objects.tolist()], np.int64)
    return list(zip(_finish(traced, n, tolerance).tolist(), n.tolist()))
