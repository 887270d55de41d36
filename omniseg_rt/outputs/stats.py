"""Per-tissue statistics of one slide, and the run's summary.csv (one row per slide).

Areas are in mm^2 (tissue areas) and um^2 (mean object area); pixel counts are read from the
masks band by band, so a memmap larger than RAM is fine.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.fileutil import atomic_write_text
from omniseg_rt.outputs.regions import occupied_columns, occupied_rows
from omniseg_rt.tissues import tissue

_BAND_BYTES = 64 << 20  # bytes of mask read at a time
_FIRST = ("slide", "status", "reason")


def foreground_pixels(masks: np.ndarray, occupied=None) -> np.ndarray:
    """Nonzero pixels per channel of ``masks`` (uint8 [T, H, W], may be a memmap): int64 [T].
    ``occupied`` (``outputs.regions``): where the masks can be nonzero (nothing else is read)."""
    channels, height, width = masks.shape
    rows = max(1, _BAND_BYTES // max(1, channels * width))
    total = np.zeros(channels, dtype=np.int64)
    for top in range(0, height, rows):
        span = occupied_columns(occupied, top, top + rows, width)
        lines = occupied_rows(occupied, top, min(top + rows, height))
        if span is None or lines is None:
            continue
        band = np.asarray(masks[:, lines[0] : lines[1], span[0] : span[1]])
        total += np.count_nonzero(band.reshape(channels, -1), axis=1)
    return total


def tissue_stats(
    task_ids: Sequence[int],
    masks: np.ndarray,
    mpp: float,
    tissue_area_mm2: float,
    objects: Mapping[int, int],
    occupied=None,
) -> list[dict[str, Any]]:
    """One dict per tissue of a scale group, in ``task_ids`` order.

    ``masks``: uint8 [T, H, W] (0/255; channel i is tissue ``task_ids[i]``) at ``mpp`` um/px;
    ``tissue_area_mm2``: the slide's tissue area; ``objects``: task id -> object count (missing
    = 0). Keys: task_id, abbrev, name, objects, area_mm2, mean_object_area_um2 (0 without
    objects), fraction_of_tissue (area_mm2 / tissue_area_mm2, 0 when there is no tissue).
    """
    if getattr(masks, "ndim", None) != 3 or masks.dtype != np.uint8:
        raise InvalidInputError(f"masks must be a uint8 [T, H, W] array; got "
                                f"{getattr(masks, 'dtype', '?')} {getattr(masks, 'shape', '?')}")
    if len(task_ids) != masks.shape[0]:
        raise InvalidInputError(f"{len(task_ids)} task ids for {masks.shape[0]} mask channels")
    if not (math.isfinite(mpp) and mpp > 0):
        raise InvalidInputError(f"mpp must be a positive number of micrometres per pixel; got {mpp!r}")
    if not (math.isfinite(tissue_area_mm2) and tissue_area_mm2 >= 0):
        raise InvalidInputError(f"tissue_area_mm2 must be >= 0; got {tissue_area_mm2!r}")
    mpp = float(mpp)
    pixels = foreground_pixels(masks, occupied)
    rows = []
    for task_id, count in zip(task_ids, pixels):
        t = tissue(task_id)
        area_um2 = float(count) * mpp * mpp
        n = int(objects.get(task_id, 0))
        rows.append({
            "task_id": t.task_id,
            "abbrev": t.abbrev,
            "name": t.name,
            "objects": n,
            "area_mm2": area_um2 / 1e6,
            "mean_object_area_um2": area_um2 / n if n else 0.0,
            "fraction_of_tissue": area_um2 / 1e6 / tissue_area_mm2 if tissue_area_mm2 > 0 else 0.0,
        })
    return rows


def update_summary_csv(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Replace or add ``row`` (keyed by its "slide" value) in the CSV at ``path``.

    All rows are rewritten sorted by slide name, columns "slide", "status", "reason" first then
    the others in order of first appearance; missing cells are empty. Written to a temporary
    name and renamed. Not safe for concurrent writers: callers serialise updates.
    """
    if not str(row.get("slide", "")).strip():
        raise InvalidInputError(f"a summary row needs a non-empty 'slide' value; got keys {sorted(row)}")
    target = Path(path)
    fieldnames, rows = read_summary_csv(target)
    columns: list[str] = list(_FIRST) + [c for c in fieldnames if c not in _FIRST]
    rows = [r for r in rows if r.get("slide") != str(row["slide"])]
    columns += [c for c in row if c not in columns]
    rows.append({k: "" if v is None else v for k, v in row.items()})
    rows.sort(key=lambda r: str(r["slide"]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(target, out.getvalue())


def read_summary_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a summary.csv (([], []) when there is none); raises
    :class:`InvalidInputError` naming the file when it is not one omniseg-rt wrote."""
    target = Path(path)
    if not target.exists():
        return [], []
    fix = "move it away (omniseg-rt will not change it) or choose another --out"
    try:
        with open(target, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{target}: not a summary.csv written by omniseg-rt (not UTF-8 text: {exc.reason} at "
                                f"byte {exc.start}); {fix}") from None
    except (OSError, csv.Error) as exc:
        raise InvalidInputError(f"{target}: cannot be read as a summary.csv ({exc}); {fix}") from None
    if fieldnames and fieldnames[0] != "slide" or any(None in r for r in rows):
        raise InvalidInputError(f"{target}: not a summary.csv written by omniseg-rt (its header "
                                f"{','.join(fieldnames[:4])[:80]!r} does not start with slide,status,reason); {fix}")
    return fieldnames, rows


def check_summary_csv(path: str | os.PathLike) -> None:
    """Raise :class:`InvalidInputError` when ``path`` exists and is not a summary.csv omniseg-rt can update."""
    read_summary_csv(path)
