"""One slide through the engine: tissue -> plan -> read (threads) -> infer (in flight) -> stitch
(on-disk canvas, journalled bands) -> outputs. The only module that knows all of them.

Memory stays flat: windows in flight and read ahead are bounded, the canvases are memory-mapped
files, and the writers stream them. Batches never straddle bands, so a resumed run feeds the
engine exactly the batches an uninterrupted one does and its outputs are identical.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt import __version__
from omniseg_rt.engines.base import Engine, GraphRunner
from omniseg_rt.errors import InvalidInputError
from omniseg_rt.fileutil import atomic_write_text, sha256_file
from omniseg_rt.runtime.finish import write_outputs
from omniseg_rt.runtime.plan import GroupPlan, plan_group, too_coarse
from omniseg_rt.runtime.readers import Prefetcher
from omniseg_rt.runtime.settings import SegmentSettings
from omniseg_rt.runtime.stitch import stitch_window
from omniseg_rt.runtime.store import WorkStore
from omniseg_rt.slide import detect_tissue, open_slide, slide_name
from omniseg_rt.slide.tissue import TISSUE_MPP
from omniseg_rt.tissues import SCALE_GROUPS

log = logging.getLogger(__name__)
MANIFEST_FORMAT = "omniseg-rt.segment/1"
IN_FLIGHT = 2  # batches submitted to the engine before the oldest is collected
OVERLAY_SIDE = 2048  # longest side of overlay.png (pixels), unless the slide is smaller


@dataclass
class SlideResult:
    """What happened to one slide. ``status``: done, skipped (already complete) or failed."""

    slide: str
    path: str
    status: str
    out: str | None = None
    reason: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)


def is_complete(slide_dir: Path) -> bool:
    try:
        return json.loads((slide_dir / "manifest.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def run_slide(path: Path, engine: Engine, out_root: Path, settings: SegmentSettings,
              notify: Callable[[dict], None]) -> SlideResult:
    """Segment one slide into ``out_root/<slide name>/``; raises on a bad slide (the caller
    records it), returns the result otherwise."""
    name = slide_name(path)
    slide_dir = out_root / name
    if is_complete(slide_dir) and not settings.force:
        return SlideResult(name, str(path), "skipped", str(slide_dir), reason="complete (use --force to redo)")
    wall = time.perf_counter()
    seconds = {"tissue": 0.0, "read": 0.0, "infer": 0.0, "stitch": 0.0, "write": 0.0}
    with open_slide(path, settings.mpp) as reader:
        g = reader.geometry
        warnings = list(reader.warnings)
        start = time.perf_counter()
        tissue_mpp = max(TISSUE_MPP, g.mpp)
        thumbnail = reader.thumbnail(tissue_mpp)
        tissue = detect_tissue(thumbnail, tissue_mpp)
        seconds["tissue"] = time.perf_counter() - start
        plans = []
        for group in SCALE_GROUPS:
            tasks = tuple(t for t in group.task_ids if t in settings.tissues)
            if not tasks:
                continue
            mpp = settings.group_mpp[group.name]
            if too_coarse(mpp, g.mpp):
                warnings.append(f"{name}: {group.name} group skipped: the slide's {g.mpp:.3g} um/px is far coarser "
                                f"than the group's {mpp:.3g} um/px")
                continue
            plan = plan_group(group, mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, settings.window,
                              settings.overlap, tissue, tissue_mpp)
            plans.append((plan, tasks))
            warnings.extend(f"{name}: {w}" for w in plan.warnings)
        if not plans:
            raise InvalidInputError(f"{path}: no scale group can run on this slide ({g.mpp:.3g} um/px); "
                                    "pass --mpp if the slide's pixel size is wrong")
        engine_id = _engine_id(engine)
        key = {"slide": str(Path(path).resolve()), "slide_bytes": _size(path), "engine": engine_id,
               "settings": settings.key()}
        slide_dir.mkdir(parents=True, exist_ok=True)
        (slide_dir / "manifest.json").unlink(missing_ok=True)  # redoing (--force): not complete until done
        store = WorkStore(slide_dir, key, resume=settings.resume)
        total = sum(p.windows for p, _ in plans)
        done_windows = 0
        notify({"event": "slide_start", "slide": name, "windows": total, "resumed": store.resumed})
        canvases = {}
        for plan, tasks in plans:
            runner, channels = _runner_for(engine, plan.group, tasks)
            canvas = store.canvas(plan.group, (len(tasks), *plan.canvas))
            canvases[plan.group] = canvas
            done = store.done_bands(plan.group)
            done_windows += sum(len(plan.bands[b]) for b in done)

            def progress(n: int, group: str = plan.group) -> None:
                nonlocal done_windows
                done_windows += n
                notify({"event": "windows", "slide": name, "group": group, "done": done_windows, "total": total})

            _run_group(plan, [b for b in range(len(plan.bands)) if b not in done], reader, runner, channels, canvas,
                       store, settings, seconds, progress)
        start = time.perf_counter()
        picture = reader.thumbnail(max(g.mpp, max(g.l0_size) * g.mpp / OVERLAY_SIDE))
        outputs, summary = write_outputs(slide_dir, g, plans, canvases, picture, tissue, tissue_mpp, warnings)
        seconds["write"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - wall
    windows = {p.group: p.windows for p, _ in plans}
    manifest = {
        "format": MANIFEST_FORMAT, "status": "complete", "slide": name, "source": str(path),
        "geometry": {"l0_size": g.l0_size, "mpp": g.mpp, "mpp_source": g.mpp_source, "vendor": g.vendor,
                     "levels": len(g.level_sizes)},
        "versions": _versions(), "engine": engine_id, "settings": settings.as_dict(),
        "groups": [{"group": p.group, "tissues": list(t), "mpp": p.mpp, "canvas": p.canvas, "window": p.window,
                    "overlap": p.overlap, "windows": p.windows, "cells": p.cells_total} for p, t in plans],
        "windows": windows, "resumed": store.resumed, "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "outputs": outputs, "warnings": warnings,
    }
    atomic_write_text(slide_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    store.remove()
    outputs["manifest"] = "manifest.json"
    return SlideResult(name, str(path), "done", str(slide_dir), outputs=outputs, summary=summary,
                       seconds=manifest["seconds"], windows=windows)


def _run_group(plan: GroupPlan, bands: list[int], reader, runner: GraphRunner, channels: list[int], canvas,
               store: WorkStore, settings: SegmentSettings, seconds: dict, progress: Callable[[int], None]) -> None:
    """Read, infer and stitch the ``bands`` of ``plan``, journalling each band when it is on disk."""
    batches = []  # (band, specs, last of its band)
    for b in bands:
        specs = plan.bands[b]
        if not specs:
            store.mark_done(plan.group, b, canvas)  # no tissue in this band: nothing to compute
            continue
        chunks = [specs[i:i + settings.batch] for i in range(0, len(specs), settings.batch)]
        batches.extend((b, chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks))
    if not batches:
        return
    prefetch = Prefetcher(reader, settings.readers, ahead=settings.batch * (IN_FLIGHT + 1))
    flight: deque = deque()

    def collect() -> None:
        band, specs, last, ticket = flight.popleft()
        start = time.perf_counter()
        margins = ticket.result()
        seconds["infer"] += time.perf_counter() - start
        start = time.perf_counter()
        for spec, window in zip(specs, margins):
            stitch_window(canvas, spec, window[channels])
        if last:
            store.mark_done(plan.group, band, canvas)
        seconds["stitch"] += time.perf_counter() - start
        progress(len(specs))

    try:
        windows = prefetch.iterate(spec for _, specs, _ in batches for spec in specs)
        for band, specs, last in batches:
            pixels = np.stack([next(windows)[1] for _ in specs])
            start = time.perf_counter()
            flight.append((band, specs, last, runner.submit(pixels)))
            seconds["infer"] += time.perf_counter() - start
            if len(flight) >= IN_FLIGHT:
                collect()
        while flight:
            collect()
    finally:
        prefetch.close()
        seconds["read"] += prefetch.seconds


def _runner_for(engine: Engine, group: str, tasks: tuple[int, ...]) -> tuple[GraphRunner, list[int]]:
    """The engine's graph for ``group`` (or one holding all of ``tasks``) and the output channels
    of ``tasks`` in it."""
    candidates = sorted(engine.runners, key=lambda r: r.spec.scale_group != group)
    for runner in candidates:
        if all(t in runner.spec.tissues for t in tasks):
            return runner, [runner.spec.tissues.index(t) for t in tasks]
    raise InvalidInputError(f"{engine.path}: no graph of this engine segments {list(tasks)} "
                            f"(it has {[list(r.spec.tissues) for r in engine.runners]}); "
                            "build one with omniseg-rt build --tissues groups")


def _engine_id(engine: Engine) -> str:
    manifest = Path(engine.path) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else f"{engine.backend}:{engine.precision}"


def _versions() -> dict[str, str]:
    import openslide

    return {"omniseg_rt": __version__, "openslide": openslide.__library_version__,
            "openslide_python": openslide.__version__, "numpy": np.__version__}


def _size(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
