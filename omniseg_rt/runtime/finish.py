"""A slide's finished canvases -> its output files (each written to a temporary name, renamed).

``mask_<group>.ome.tif`` (one channel per tissue, 0/255, pyramidal, physical pixel size),
``tissue_mask.png``, ``objects.geojson`` (QuPath), ``summary.json``, ``overlay.png``.
"""

from __future__ import annotations

import json

import os
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt.fileutil import atomic_write_text
from omniseg_rt.outputs import (downsample_mask, mask_objects, render_overlay, tissue_stats, to_level0,
                                write_geojson, write_mask_tiff)
from omniseg_rt.tissues import TISSUES


def write_outputs(slide_dir: Path, geometry, plans, canvases: dict[str, np.ndarray], picture: np.ndarray,
                  tissue: np.ndarray, tissue_mpp: float, warnings: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Write every output of one slide; returns ({kind: file name}, summary).

    ``plans``: [(GroupPlan, task ids)]; ``canvases[group]``: uint8 [T, H, W] 0/255 masks;
    ``picture``: RGB uint8 [h, w, 3] of the whole slide for the overlay; ``tissue``: bool [h', w']
    tissue mask at ``tissue_mpp`` um/px.
    """
    from PIL import Image

    outputs: dict[str, str] = {}
    for plan, tasks in plans:
        name = f"mask_{plan.group}.ome.tif"
        write_mask_tiff(slide_dir / name, canvases[plan.group], [TISSUES[t].abbrev for t in tasks], plan.mpp)
        outputs[f"mask_{plan.group}"] = name
    _save_png(slide_dir / "tissue_mask.png", Image.fromarray(np.where(tissue, 255, 0).astype(np.uint8)))
    outputs["tissue_mask"] = "tissue_mask.png"

    def objects():
        for plan, tasks in plans:
            for i, task in enumerate(tasks):
                # bands of about 64 MB of labels, whatever the slide's width
                rows = max(64, min(2048, (64 << 20) // (5 * plan.canvas[1])))
                for polygon, _ in mask_objects(canvases[plan.group][i], band_rows=rows):
                    yield task, to_level0(polygon, plan.scale, plan.scale)

    counts = write_geojson(slide_dir / "objects.geojson", objects(), id_seed=geometry.name)
    outputs["objects"] = "objects.geojson"
    tissue_area_mm2 = float(tissue.sum()) * tissue_mpp**2 / 1e6
    rows = []
    for plan, tasks in plans:
        rows.extend(tissue_stats(list(tasks), canvases[plan.group], plan.mpp, tissue_area_mm2, counts))
    summary = {"slide": geometry.name, "mpp": geometry.mpp, "tissue_area_mm2": round(tissue_area_mm2, 4),
               "tissues": rows, "warnings": warnings}
    atomic_write_text(slide_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    outputs["summary"] = "summary.json"

    h, w = picture.shape[:2]
    layers = [(task, downsample_mask(canvases[plan.group][i], (h, w)))
              for plan, tasks in plans for i, task in enumerate(tasks)]
    render_overlay(slide_dir / "overlay.png", picture, layers)
    outputs["overlay"] = "overlay.png"
    return outputs, summary


def _save_png(path: Path, image) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)



