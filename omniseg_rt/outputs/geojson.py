"""Objects as a GeoJSON FeatureCollection that QuPath (0.4+) imports (File > Import objects).

Geometries are in level-0 slide pixels (x right, y down), coordinates rounded to 0.01 px. Each
feature is a QuPath detection classified by its tissue, with the tissue's name and colour from
:data:`omniseg_rt.tissues.TISSUES`. The file is streamed feature by feature to a temporary name
and renamed when complete; ids are uuid5 of (seed, task id, feature index), so the same input
gives a byte-identical file.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import shapely
import shapely.affinity
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.tissues import tissue
from omniseg_rt.fileutil import temp_path

log = logging.getLogger(__name__)

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/omniseg-rt/geojson")
_GRID = 0.01  # level-0 pixels: coordinates are written to two decimals


def to_level0(polygon: Polygon, scale_x: float, scale_y: float) -> Polygon:
    """``polygon`` in mask pixels -> level-0 slide pixels: coordinates times ``scale_x`` /
    ``scale_y`` (level-0 pixels per mask pixel, each axis), about the origin."""
    if not (scale_x > 0 and scale_y > 0):
        raise InvalidInputError(f"scales must be positive level-0 pixels per mask pixel; got {scale_x}, {scale_y}")
    return shapely.affinity.scale(polygon, xfact=scale_x, yfact=scale_y, origin=(0.0, 0.0))


def _ring(coords) -> list[list[float]]:
    return [[round(x, 2), round(y, 2)] for x, y in coords]


def _snap(polygon: Polygon) -> Polygon | None:
    """``polygon`` on the 0.01 px grid, still valid (largest part if snapping split it), outer
    ring counter-clockwise as RFC 7946 asks; None if it vanished."""
    snapped = shapely.set_precision(polygon, _GRID)
    if snapped.is_empty:
        return None
    parts = [g for g in getattr(snapped, "geoms", [snapped]) if isinstance(g, Polygon) and not g.is_empty]
    if not parts:
        return None
    return orient(max(parts, key=lambda g: g.area), sign=1.0)


def _feature(task_id: int, polygon: Polygon, feature_id: str) -> str:
    t = tissue(task_id)
    geometry = {
        "type": "Polygon",
        "coordinates": [_ring(polygon.exterior.coords), *(_ring(r.coords) for r in polygon.interiors)],
    }
    feature = {
        "type": "Feature",
        "id": feature_id,
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": {"name": t.name, "color": list(t.colour)},
            "tissue": t.abbrev,
        },
    }
    return json.dumps(feature, separators=(",", ":"))


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
            for task_id, polygon in objects:
                tissue(task_id)  # a bad id fails here with the list of known tissues
                if not isinstance(polygon, Polygon):
                    raise InvalidInputError(f"object {index} of task {task_id} is a "
                                            f"{type(polygon).__name__}, not a shapely Polygon")
                snapped = _snap(polygon)
                if snapped is None:
                    dropped += 1
                    continue
                feature_id = str(uuid.uuid5(_ID_NAMESPACE, f"{seed}:{task_id}:{index}"))
                fh.write(("\n" if index == 0 else ",\n") + _feature(task_id, snapped, feature_id))
                counts[task_id] = counts.get(task_id, 0) + 1
                index += 1
            fh.write("\n]}\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if dropped:
        log.warning("%s: %d polygons smaller than the 0.01 px grid were left out", target, dropped)
    log.info("wrote %s: %d features", target, sum(counts.values()))
    return counts
