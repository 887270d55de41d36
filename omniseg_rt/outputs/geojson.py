"""Objects as a GeoJSON FeatureCollection that QuPath (0.4+) imports (File > Import objects).

Geometries are in level-0 slide pixels (x right, y down), coordinates rounded to 0.01 px. Each
feature is a QuPath detection classified by its tissue, with the tissue's name and colour from
:data:`omniseg_rt.tissues.TISSUES`. The file is streamed to a temporary name, a batch of objects
at a time (snapped, oriented and formatted together), and renamed when complete; ids are uuid5 of (seed, task id, feature index), so the same input
gives a byte-identical file.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.tissues import tissue
from omniseg_rt.fileutil import temp_path

log = logging.getLogger(__name__)

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/omniseg-rt/geojson")
_GRID = 0.01  # level-0 pixels: coordinates are written to two decimals


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_ID_NAMESPACE, name))`` without building a UUID object (3x faster: a
    slide has 100,000 objects and more)."""
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_level0(polygons, scale_x: float, scale_y: float):
    """``polygons`` (a Polygon, or an array of them) in mask pixels -> level-0 slide pixels:
    coordinates times ``scale_x`` / ``scale_y`` (level-0 pixels per mask pixel, each axis)."""
    if not (scale_x > 0 and scale_y > 0):
        raise InvalidInputError(f"scales must be positive level-0 pixels per mask pixel; got {scale_x}, {scale_y}")
    factors = np.array([scale_x, scale_y])
    return shapely.transform(polygons, lambda xy: xy * factors)


def _snap(polygons: np.ndarray) -> np.ndarray:
    """Polygon [N] -> on the 0.01 px grid, still valid (largest part if snapping split one), outer
    rings counter-clockwise as RFC 7946 asks; None where one vanished. Coordinates are rounded
    first; only polygons that rounding breaks go through the (slower) validity-keeping snap."""
    snapped = shapely.set_precision(polygons, _GRID, mode="pointwise")
    broken = np.flatnonzero(~shapely.is_valid(snapped) | shapely.is_empty(snapped))
    if len(broken):
        snapped[broken] = shapely.set_precision(polygons[broken], _GRID)
        for k in broken:
            parts = [g for g in getattr(snapped[k], "geoms", [snapped[k]]) if isinstance(g, Polygon) and not g.is_empty]
            snapped[k] = max(parts, key=lambda g: g.area) if parts else None
    return shapely.orient_polygons(snapped)


def _features(task_ids: list[int], polygons: np.ndarray, feature_ids: list[str]) -> list[str]:
    """One GeoJSON Feature (compact JSON text) per polygon: the geometry written by GEOS
    (``shapely.to_geojson``, without the GIL; the polygons are on the 0.01 px grid already, so
    each coordinate prints with two decimals at most)."""
    geometries = shapely.to_geojson(polygons)
    return [f'{{"type":"Feature","id":"{feature_id}","geometry":{geometry},"properties":{_properties(task_id)}}}'
            for task_id, geometry, feature_id in zip(task_ids, geometries.tolist(), feature_ids)]


@functools.cache
def _properties(task_id: int) -> str:
    t = tissue(task_id)
    return json.dumps({"objectType": "detection", "classification": {"name": t.name, "color": list(t.colour)},
                       "tissue": t.abbrev}, separators=(",", ":"))


_BATCH = 1024  # objects snapped and formatted together


def write_geojson(
    path: str | os.PathLike, objects: Iterable[tuple[int, Polygon]], *, id_seed: str | None = None
) -> dict[int, int]:
    """Write ``objects`` ((task id, Polygon in level-0 slide pixels) pairs, consumed once, in
    order) to ``path`` as a GeoJSON FeatureCollection; returns {task id: features written}.

    ``id_seed`` (default: the file name) goes into every feature id so that files of different
    slides do not share ids. A polygon that vanishes on the 0.01 px grid is left out (and
    logged).
    """
    target = Path(path)
    tmp = temp_path(target)
    seed = target.name if id_seed is None else id_seed
    counts: dict[int, int] = {}
    dropped = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"type":"FeatureCollection","features":[')
            index = 0
            checked = _checked(objects)
            for batch in iter(lambda: list(itertools.islice(checked, _BATCH)), []):
                task_ids, polygons = zip(*batch)
                snapped = _snap(np.array(polygons, dtype=object))
                kept = [k for k, p in enumerate(snapped) if p is not None]
                dropped += len(batch) - len(kept)
                task_ids = [task_ids[k] for k in kept]
                ids = [_uuid5(f"{seed}:{t}:{index + n}") for n, t in enumerate(task_ids)]
                for feature in _features(task_ids, snapped[kept], ids):
                    fh.write(("\n" if index == 0 else ",\n") + feature)
                    index += 1
                for t in task_ids:
                    counts[t] = counts.get(t, 0) + 1
            fh.write("\n]}\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if dropped:
        log.warning("%s: %d polygons smaller than the 0.01 px grid were left out", target, dropped)
    log.info("wrote %s: %d features", target, sum(counts.values()))
    return counts


def _checked(objects: Iterable[tuple[int, Polygon]]) -> Iterator[tuple[int, Polygon]]:
    """``objects``, each failing on a bad tissue id (with the list of known tissues) or a
    geometry that is not a Polygon."""
    for index, (task_id, polygon) in enumerate(objects):
        tissue(task_id)
        if not isinstance(polygon, Polygon):
            raise InvalidInputError(f"object {index} of task {task_id} is a "
                                    f"{type(polygon).__name__}, not a shapely Polygon")
        yield task_id, polygon
