"""``segment``: many slides, one engine; failures recorded per slide, the others go on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omniseg_rt.engines import Engine, open_engine
from omniseg_rt.errors import InvalidInputError, OmnisegError
from omniseg_rt.outputs import update_summary_csv
from omniseg_rt.runtime.pipeline import SlideResult, run_slide
from omniseg_rt.runtime.settings import DEFAULT_OVERLAP, SegmentSettings
from omniseg_rt.slide import find_slides, slide_name
from omniseg_rt.tissues import SCALE_GROUPS, parse_tissues

log = logging.getLogger(__name__)


def segment(
    slides: str | os.PathLike | Iterable[str | os.PathLike],
    engine: str | os.PathLike | Engine | None = None,
    out: str | os.PathLike = "segmentations",
    tissues: str | Sequence[int] | None = None,
    mpp: float | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    readers: int = 2,
    window: int | None = None,
    group_mpp: dict[str, float] | None = None,
    resume: bool = True,
    force: bool = False,
    on_progress: Callable[[dict], None] | None = None,
) -> list[SlideResult]:
    """Segment ``slides`` (files, folders, DICOM folders) into ``out/<slide name>/``.

    ``engine``: an engine directory or an open :class:`Engine` (default: the bundled demo
    model's CPU engine, built once and cached); ``tissues``: "all", abbreviations ("CAP,TUFT"),
    groups ("5x") or task ids; ``mpp``: the slides' level-0 pixel size when they lack one or state
    it wrongly; ``group_mpp``: target um/px per scale group (default: the tissues table's nominal
    5x 2.0, 10x 1.0, 40x 0.25); ``overlap``/``window``: group pixels; ``batch``: windows per
    engine call (default: the engine profile's). Slides already complete are skipped unless
    ``force``.

    Returns one :class:`SlideResult` per slide (status done / skipped / failed, with the reason).
    Bad arguments raise before any slide is touched; a bad slide is recorded and the others go on.
    """
    notify = on_progress or (lambda event: None)
    paths = find_slides([slides] if isinstance(slides, (str, os.PathLike)) else list(slides))
    own = not isinstance(engine, Engine)
    if engine is None:
        handle = open_default_engine(notify)
    else:
        handle = open_engine(engine) if own else engine
    try:
        settings = make_settings(handle.manifest, tissues=tissues, mpp=mpp, overlap=overlap, batch=batch,
                                 readers=readers, window=window, group_mpp=group_mpp, resume=resume, force=force)
        out_root = Path(out)
        out_root.mkdir(parents=True, exist_ok=True)
        results = []
        for index, path in enumerate(paths):
            notify({"event": "slide", "slide": slide_name(path), "index": index, "slides": len(paths)})
            try:
                result = run_slide(path, handle, out_root, settings, notify)
            except (OmnisegError, OSError) as exc:
                log.warning("%s failed: %s", path, exc)
                result = SlideResult(slide_name(path), str(path), "failed", reason=str(exc))
            record(out_root, result)
            notify({"event": "slide_done", **asdict(result)})
            results.append(result)
        return results
    finally:
        if own:
            handle.close()


def open_default_engine(notify: Callable[[dict], None]) -> Engine:
    from omniseg_rt.runtime import default_engine

    return default_engine.open_default_engine(lambda message: notify({"event": "build", "message": message}))


def make_settings(manifest: dict[str, Any], tissues=None, mpp=None, overlap=None, batch=None, readers=2,
                  window=None, group_mpp=None, resume=True, force=False) -> SegmentSettings:
    """Checked settings for an engine with ``manifest`` (window and batch default to its profile's)."""
    if tissues is None or isinstance(tissues, str):
        task_ids = tuple(t.task_id for t in parse_tissues(tissues or "all"))
    else:
        task_ids = tuple(sorted({int(t) for t in tissues}))
    targets = {g.name: g.nominal_mpp for g in SCALE_GROUPS}
    unknown = set(group_mpp or {}) - set(targets)
    if unknown:
        raise InvalidInputError(f"group_mpp: unknown scale groups {sorted(unknown)}; known: {sorted(targets)}")
    targets.update({k: float(v) for k, v in (group_mpp or {}).items()})
    profile = manifest.get("profile", {})
    settings = SegmentSettings(
        tissues=task_ids, mpp=mpp, group_mpp=targets, window=window or int(manifest.get("window", 512)),
        overlap=DEFAULT_OVERLAP if overlap is None else overlap,
        batch=batch or int(profile.get("batch", {}).get("opt", 4)), readers=readers, resume=resume, force=force)
    if settings.window % 16 or settings.window < 64:
        raise InvalidInputError(f"window {settings.window}: must be a multiple of 16, at least 64")
    if settings.overlap < 0 or settings.overlap % 2 or settings.overlap >= settings.window // 2:
        raise InvalidInputError(f"--overlap {settings.overlap}: must be even, >= 0 and under half the window "
                                f"({settings.window // 2})")
    if settings.batch < 1 or settings.readers < 1:
        raise InvalidInputError("--batch and --readers must be at least 1")
    return settings


def record(out_root: Path, result: SlideResult) -> None:
    """The slide's row in ``out_root/summary.csv`` (skipped slides keep the row they have)."""
    if result.status == "skipped":
        return
    row = {"slide": result.slide, "status": result.status, "reason": result.reason or "", "path": result.path}
    for t in result.summary.get("tissues", []):
        row[f"{t['abbrev']}_objects"] = t["objects"]
        row[f"{t['abbrev']}_area_mm2"] = round(t["area_mm2"], 5)
    if result.summary:
        row["tissue_area_mm2"] = result.summary.get("tissue_area_mm2")
    if result.seconds:
        row["seconds"] = result.seconds.get("total")
    update_summary_csv(out_root / "summary.csv", row)
