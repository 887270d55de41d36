"""A slide's finished canvases -> its output files (each written to a temporary name, renamed).

``mask_<group>.ome.tif`` (one channel per tissue, 0/255, pyramidal, physical pixel size),
``tissue_mask.png``, ``objects.geojson`` (QuPath), ``summary.json``, ``overlay.png``; with
``--exclusive`` also ``labels.ome.tif`` (one label per pixel, ``outputs/exclusive.py``) and
``objects_exclusive.geojson``. An I/O error (disk full, read-only) names the file being written.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from omniseg_rt.fileutil import atomic_write_text, io_errors, is_temp_name, replacing
from omniseg_rt.outputs import (downsample_mask, masks_objects, render_overlay, tissue_stats, to_level0,
                                write_geojson, write_mask_tiff)
from omniseg_rt.outputs.exclusive import LABELS, LabelMask, write_label_map
from omniseg_rt.slide.plan import Occupancy
from omniseg_rt.tissues import TISSUES

log = logging.getLogger(__name__)


def write_outputs(slide_dir: Path, geometry, plans, canvases: dict[str, np.ndarray], picture: np.ndarray,
                  tissue: np.ndarray, tissue_mpp: float, warnings: list[str], scores: dict[str, np.ndarray] | None = None,
                  work_dir: Path | None = None, pool: Executor | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Write every output of one slide; returns ({kind: file name}, summary).

    ``plans``: [(GroupPlan, task ids)]; ``canvases[group]``: uint8 [T, H, W] 0/255 masks;
    ``picture``: RGB uint8 [h, w, 3] of the whole slide for the overlay; ``tissue``: bool [h', w']
    tissue mask at ``tissue_mpp`` um/px; ``scores[group]``: uint8 [T, H, W] stitched scores, given
    for the exclusive label map (built in ``work_dir``); ``pool``: processes that trace the
    polygons (``outputs.mask_objects``). Polygons are in level-0 pixels, clipped to the slide.
    """
    from PIL import Image

    outputs: dict[str, str] = {}
    occupancy = {plan.group: Occupancy(plan) for plan, _ in plans}  # the writers read only where cells are
    for plan, tasks in plans:
        name = f"mask_{plan.group}.ome.tif"
        with io_errors(slide_dir / name):
            write_mask_tiff(slide_dir / name, canvases[plan.group], [TISSUES[t].abbrev for t in tasks], plan.mpp,
                            occupied=occupancy[plan.group])
        outputs[f"mask_{plan.group}"] = name
    _save_png(slide_dir / "tissue_mask.png", Image.fromarray(np.where(tissue, 255, 0).astype(np.uint8)))
    outputs["tissue_mask"] = "tissue_mask.png"

    width, height = geometry.l0_size

    def objects():
        layers = [(plan, i, task) for plan, tasks in plans for i, task in enumerate(tasks)]
        found = masks_objects([(canvases[plan.group][i], _tracing_rows(plan.canvas[1]), occupancy[plan.group])
                               for plan, i, _ in layers], pool=pool)
        for k, objects_of_layer in itertools.groupby(found, key=lambda item: item[0]):
            plan, _, task = layers[k]
            for polygon in _in_level0(((p, n) for _, p, n in objects_of_layer), plan.scale, width, height):
                yield task, polygon

    with io_errors(slide_dir / "objects.geojson"):
        counts = write_geojson(slide_dir / "objects.geojson", objects(), id_seed=geometry.name)
    outputs["objects"] = "objects.geojson"
    tissue_area_mm2 = float(tissue.sum()) * tissue_mpp**2 / 1e6
    rows = []
    for plan, tasks in plans:
        rows.extend(tissue_stats(list(tasks), canvases[plan.group], plan.mpp, tissue_area_mm2, counts,
                                 occupied=occupancy[plan.group]))
    summary = {"slide": geometry.name, "mpp": geometry.mpp, "tissue_area_mm2": round(tissue_area_mm2, 4),
               "tissues": rows, "warnings": warnings}
    if scores:
        outputs.update(_write_exclusive(slide_dir, work_dir or slide_dir, geometry, plans, canvases, scores, tissue,
                                        tissue_mpp, summary, occupancy, pool))
    atomic_write_text(slide_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    outputs["summary"] = "summary.json"

    h, w = picture.shape[:2]
    layers = [(task, downsample_mask(canvases[plan.group][i], (h, w), occupancy[plan.group]))
              for plan, tasks in plans for i, task in enumerate(tasks)]
    with io_errors(slide_dir / "overlay.png"):
        render_overlay(slide_dir / "overlay.png", picture, layers)
    outputs["overlay"] = "overlay.png"
    return outputs, summary


def _write_exclusive(slide_dir: Path, work_dir: Path, geometry, plans, canvases, scores, tissue, tissue_mpp: float,
                     summary: dict, occupancy: dict, pool: Executor | None = None) -> dict[str, str]:
    """``labels.ome.tif`` (at the finest group's pixel size) and ``objects_exclusive.geojson``;
    adds each tissue's exclusive area to ``summary``. Regions without a cell of any group are
    neither computed nor read."""
    finest = min((plan for plan, _ in plans), key=lambda p: p.mpp)

    def occupied(y0: int, y1: int, x0: int, x1: int) -> bool:  # finest-group pixels
        for plan, _ in plans:
            f = finest.mpp / plan.mpp
            if occupancy[plan.group](int(y0 * f), math.ceil(y1 * f), int(x0 * f), math.ceil(x1 * f)):
                return True
        return False

    path = work_dir / "labels.u8"
    with io_errors(path):
        labels = np.memmap(path, dtype=np.uint8, mode="w+", shape=finest.canvas)
    try:
        # bands of about 64 MB of working arrays (~40 bytes per output pixel for six tissues)
        band_rows = max(16, min(1024, (64 << 20) // (40 * finest.canvas[1])))
        write_label_map(labels, finest.canvas, finest.mpp,
                        [(tasks, canvases[p.group], scores[p.group], p.mpp) for p, tasks in plans], tissue, tissue_mpp,
                        band_rows=band_rows, occupied=occupied)
        with io_errors(slide_dir / "labels.ome.tif"):
            write_mask_tiff(slide_dir / "labels.ome.tif", labels[None], ["tissue label"], finest.mpp,
                            occupied=occupied)
        width, height = geometry.l0_size
        present = [t for _, tasks in plans for t in tasks]

        def objects():
            tasks = sorted(present)
            found = masks_objects([(LabelMask(labels, task + 1), _tracing_rows(finest.canvas[1]), occupied)
                                   for task in tasks], pool=pool)
            for k, objects_of_task in itertools.groupby(found, key=lambda item: item[0]):
                for polygon in _in_level0(((p, n) for _, p, n in objects_of_task), finest.scale, width, height):
                    yield tasks[k], polygon

        with io_errors(slide_dir / "objects_exclusive.geojson"):
            write_geojson(slide_dir / "objects_exclusive.geojson", objects(), id_seed=geometry.name)
        counts = _label_counts(labels, occupied)
        summary["exclusive"] = {"labels": {str(k): v for k, v in LABELS.items()}, "mpp": finest.mpp,
                                "area_mm2": {TISSUES[t].abbrev: round(float(counts[t + 1]) * finest.mpp**2 / 1e6, 6)
                                             for t in sorted(present)}}
    finally:
        path.unlink(missing_ok=True)  # a work file: the map is freed when this returns
    return {"labels": "labels.ome.tif", "objects_exclusive": "objects_exclusive.geojson"}


def _tracing_rows(width: int) -> int:
    """Rows per band of polygon tracing: about 64 MB of labels, whatever the canvas ``width``."""
    return max(64, min(2048, (64 << 20) // (5 * width)))


def _label_counts(labels: np.ndarray, occupied, rows: int = 4096) -> np.ndarray:
    """int64 [256]: pixels per nonzero label value, read in bands (bands ``occupied`` rules out skipped)."""
    counts = np.zeros(256, np.int64)
    for top in range(0, labels.shape[0], rows):
        if occupied(top, top + rows, 0, labels.shape[1]):
            counts += np.bincount(np.asarray(labels[top:top + rows]).ravel(), minlength=256)
    return counts


def _in_level0(found, scale: float, width: float, height: float, chunk: int = 1024):
    """(Polygon, count) pairs in mask pixels -> Polygons in level-0 pixels (times ``scale``),
    clipped to the slide; scaled ``chunk`` at a time."""
    for part in iter(lambda: [polygon for polygon, _ in itertools.islice(found, chunk)], []):
        polygons = to_level0(np.array(part, dtype=object), scale, scale)
        bounds = shapely.bounds(polygons)
        inside = (bounds[:, :2] >= 0).all(axis=1) & (bounds[:, 2] <= width) & (bounds[:, 3] <= height)
        for polygon, within in zip(polygons.tolist(), inside.tolist()):
            if within:
                yield polygon
            else:
                yield from clip_to_slide(polygon, width, height)


def clip_to_slide(polygon: Polygon, width: float, height: float) -> list[Polygon]:
    """``polygon`` (level-0 pixels) cut to the slide's ``width`` x ``height``: the last mask
    pixels of a row or column reach past the slide's edge. Usually one polygon; none when it lay
    outside, several when the cut splits it."""
    minx, miny, maxx, maxy = polygon.bounds
    if minx >= 0 and miny >= 0 and maxx <= width and maxy <= height:
        return [polygon]
    clipped = shapely.clip_by_rect(polygon, 0.0, 0.0, float(width), float(height))
    return [g for g in getattr(clipped, "geoms", [clipped]) if isinstance(g, Polygon) and not g.is_empty]


def remove_unlisted_outputs(slide_dir: Path, outputs: dict[str, str]) -> None:
    """Delete mask and label files of ``slide_dir`` that ``outputs`` does not list (groups or an
    exclusive label map that an earlier, forced-over run wrote and this one did not)."""
    for path in [*slide_dir.glob("mask_*.ome.tif"), slide_dir / "labels.ome.tif",
                 slide_dir / "objects_exclusive.geojson"]:
        if not path.exists():
            continue
        if path.name not in outputs.values():
            log.info("removing %s: not an output of this run", path)
            path.unlink(missing_ok=True)


def remove_temp_files(folder: Path) -> None:
    """Delete temporary files left in ``folder`` by runs that were killed while writing (the caller
    holds the folder's lock: no live writer owns them)."""
    for path in folder.iterdir():
        if is_temp_name(path.name) and path.is_file():
            path.unlink(missing_ok=True)


def _save_png(path: Path, image) -> None:
    with io_errors(path), replacing(path) as tmp:
        image.save(tmp, format="PNG")
