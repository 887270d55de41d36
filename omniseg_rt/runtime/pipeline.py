"""One slide through the engine: tissue -> plan -> read (threads or processes) -> infer (in
flight) -> stitch (on-disk canvas, journalled bands) -> outputs. The only module that knows all of
them. Computing (:func:`compute_slide`) and writing (:class:`PendingWrite`) are separate steps, so
that a multi-slide run writes one slide's outputs while the engine computes the next.

Memory stays flat: windows in flight and read ahead are bounded, the canvases are memory-mapped
files, and the writers stream them. Batches never straddle bands (unless the engine's results do
not depend on the batch), so a resumed run feeds the engine exactly the batches an uninterrupted
one does and its outputs are identical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt import __version__
from omniseg_rt.engines.base import Engine, GraphRunner
from omniseg_rt.errors import InvalidInputError
from omniseg_rt.fileutil import atomic_write_text, io_errors, sha256_file
from omniseg_rt.outputs import read_mask_into
from omniseg_rt.runtime.finish import remove_temp_files, remove_unlisted_outputs, write_outputs
from omniseg_rt.slide.plan import GroupPlan, plan_group, too_coarse
from omniseg_rt.runtime.readers import Prefetcher, ReadProcesses
from omniseg_rt.runtime.request import decide, request_of
from omniseg_rt.runtime.settings import SegmentSettings
from omniseg_rt.runtime.stitch import Blender, stitch_windows
from omniseg_rt.runtime.store import WorkStore, check_free_space, output_bytes_estimate
from omniseg_rt.slide import detect_tissue, open_slide, slide_name
from omniseg_rt.slide.tissue import TISSUE_MPP
from omniseg_rt.tissues import SCALE_GROUPS, TISSUES

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


class RequestConflictError(InvalidInputError):
    """The slide is complete for other settings; ``--force`` replaces it."""


def run_slide(path: Path, engine: Engine, out_root: Path, settings: SegmentSettings,
              notify: Callable[[dict], None]) -> SlideResult:
    """Segment one slide into ``out_root/<slide name>/``; raises on a bad slide (the caller
    records it), returns the result otherwise. What is done depends on the slide's earlier
    outputs (``runtime.request``): skipped when complete for this request, missing tissues added,
    other settings refused unless ``settings.force``."""
    outcome = compute_slide(path, engine, out_root, settings, notify)
    return outcome if isinstance(outcome, SlideResult) else outcome.write()


@dataclass
class PendingWrite:
    """A slide whose every band is computed and journalled: :meth:`write` turns its canvases into
    the outputs and the manifest that marks it complete. It needs neither the engine nor the slide
    handle, so a multi-slide run writes one slide while the engine computes the next; killed in
    between, a resumed run finds every band journalled and only writes."""

    name: str
    path: Path
    slide_dir: Path
    manifest_base: dict[str, Any]
    geometry: Any
    plans: list
    canvases: dict
    scores: dict
    picture: np.ndarray
    tissue: np.ndarray
    tissue_mpp: float
    warnings: list[str]
    store: WorkStore
    seconds: dict[str, float]
    reason: str | None

    def write(self, pool: Executor | None = None) -> SlideResult:
        """The outputs and the manifest (``pool``: processes tracing the polygons, or None)."""
        start = time.perf_counter()
        slide_dir = self.slide_dir
        (slide_dir / "manifest.json").unlink(missing_ok=True)  # the old outputs are being replaced
        outputs, summary = write_outputs(slide_dir, self.geometry, self.plans, self.canvases, self.picture, self.tissue,
                                         self.tissue_mpp, self.warnings, scores=self.scores, work_dir=self.store.folder,
                                         pool=pool)
        remove_unlisted_outputs(slide_dir, outputs)
        seconds = {**self.seconds, "write": time.perf_counter() - start}
        seconds["total"] = seconds["compute"] + seconds["write"]
        manifest = {**self.manifest_base, "seconds": {k: round(v, 3) for k, v in seconds.items()}, "outputs": outputs}
        atomic_write_text(slide_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        self.store.remove()
        outputs["manifest"] = "manifest.json"
        return SlideResult(self.name, str(self.path), "done", str(slide_dir), reason=self.reason, outputs=outputs,
                           summary=summary, seconds=manifest["seconds"], windows=manifest["windows"])


def compute_slide(path: Path, engine: Engine, out_root: Path, settings: SegmentSettings,
                  notify: Callable[[dict], None]) -> SlideResult | PendingWrite:
    """Everything of :func:`run_slide` up to the writing: the skipped slide's result, or its
    :class:`PendingWrite` once every band is computed and journalled."""
    name = slide_name(path)
    slide_dir = out_root / name
    decision = decide(slide_dir, request_of(settings, engine.manifest), settings.force)
    if decision.action == "skip":
        return SlideResult(name, str(path), "skipped", str(slide_dir), reason=decision.reason)
    if decision.action == "conflict":
        raise RequestConflictError(decision.reason)
    if decision.action == "add":
        log.info("%s: %s", name, decision.reason)
    settings = replace(settings, tissues=decision.tissues, exclusive=settings.exclusive or decision.exclusive)
    wall = time.perf_counter()
    seconds = {"tissue": 0.0, "read": 0.0, "infer": 0.0, "stitch": 0.0}
    # reading processes start up while the parent detects tissue
    processes = ReadProcesses(path, settings.mpp, settings.readers) if settings.read_with == "processes" else None
    with open_slide(path, settings.mpp) as reader, processes or contextlib.nullcontext():
        g = reader.geometry
        start = time.perf_counter()
        tissue_mpp = max(TISSUE_MPP, g.mpp)
        tissue = detect_tissue(reader.thumbnail(tissue_mpp), tissue_mpp)
        seconds["tissue"] = time.perf_counter() - start
        plans, warnings = _plans(path, name, g, settings, tissue, tissue_mpp, list(reader.warnings))
        for warning in warnings:
            log.warning("%s", warning)
        engine_id = _engine_id(engine)
        key = {"slide": str(Path(path).resolve()), "slide_bytes": _size(path), "engine": engine_id,
               "settings": settings.key()}
        with io_errors(slide_dir):
            slide_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(slide_dir)
        store = WorkStore(slide_dir, key, resume=settings.resume)
        shapes = {plan.group: (len(tasks), *plan.canvas) for plan, tasks in plans}
        work = {**shapes, **({f"{g_}.score": s for g_, s in shapes.items()} if settings.exclusive else {})}
        labels = [(1, *min(plans, key=lambda pt: pt[0].mpp)[0].canvas)] if settings.exclusive else []
        check_free_space(slide_dir, sum(store.canvas_bytes_to_allocate(g_, s) for g_, s in work.items()),
                         output_bytes_estimate([*shapes.values(), *labels]))
        total = sum(p.windows for p, _ in plans)
        done_windows = 0
        notify({"event": "slide_start", "slide": name, "windows": total, "resumed": store.resumed})
        canvases, scores = {}, {}
        for plan, tasks in plans:
            canvas = store.canvas(plan.group, shapes[plan.group])
            canvases[plan.group] = canvas
            if settings.exclusive:
                scores[plan.group] = store.canvas(f"{plan.group}.score", shapes[plan.group])
            done = store.done_bands(plan.group)
            if plan.group in decision.reuse and len(done) < len(plan.bands):
                done = _reuse_group(slide_dir, plan, tasks, canvas, store, done)
            done_windows += sum(len(plan.bands[b]) for b in done)

            def progress(n: int, group: str = plan.group) -> None:
                nonlocal done_windows
                done_windows += n
                notify({"event": "windows", "slide": name, "group": group, "done": done_windows, "total": total})

            todo = [b for b in range(len(plan.bands)) if b not in done]
            if todo:
                runner, channels = _runner_for(engine, plan.group, tasks)
                _run_group(plan, todo, reader, runner, channels, canvas, scores.get(plan.group), store, settings,
                           seconds, progress, processes)
        start = time.perf_counter()
        picture = reader.thumbnail(max(g.mpp, max(g.l0_size) * g.mpp / OVERLAY_SIDE))
        seconds["read"] += time.perf_counter() - start  # the overlay's picture
    seconds["compute"] = time.perf_counter() - wall
    manifest_base = {
        "format": MANIFEST_FORMAT, "status": "complete", "slide": name, "source": str(path),
        "geometry": {"l0_size": g.l0_size, "mpp": g.mpp, "mpp_source": g.mpp_source, "vendor": g.vendor,
                     "levels": len(g.level_sizes)},
        "versions": _versions(), "engine": engine_id, "request": request_of(settings, engine.manifest),
        "settings": settings.as_dict(),
        "groups": [{"group": p.group, "tissues": list(t), "mpp": p.mpp, "canvas": p.canvas, "window": p.window,
                    "overlap": p.overlap, "windows": p.windows, "cells": p.cells_total,
                    "reused": p.group in decision.reuse} for p, t in plans],
        "windows": {p.group: p.windows for p, _ in plans}, "resumed": store.resumed, "warnings": warnings,
    }
    return PendingWrite(name, Path(path), slide_dir, manifest_base, g, plans, canvases, scores, picture,
                        tissue, tissue_mpp, warnings, store, seconds, decision.reason)


def _plans(path: Path, name: str, g, settings: SegmentSettings, tissue, tissue_mpp: float,
           warnings: list[str]) -> tuple[list[tuple[GroupPlan, tuple[int, ...]]], list[str]]:
    """The window plan of every scale group holding a requested tissue, and the warnings so far."""
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
    return plans, warnings


def _reuse_group(slide_dir: Path, plan: GroupPlan, tasks: tuple[int, ...], canvas, store: WorkStore,
                 done: set[int]) -> set[int]:
    """Fill ``canvas`` from the group's existing mask file (same tissues, same settings) and
    journal every band; the bands already done when the file does not fit."""
    path = slide_dir / f"mask_{plan.group}.ome.tif"
    if not read_mask_into(path, canvas, [TISSUES[t].abbrev for t in tasks]):
        log.info("%s does not fit this run's %s canvas: computing the group again", path, plan.group)
        return done
    for band in range(len(plan.bands)):
        if band not in done:
            store.mark_done(plan.group, band, canvas)
    return set(range(len(plan.bands)))


def _run_group(plan: GroupPlan, bands: list[int], reader, runner: GraphRunner, channels: list[int], canvas,
               scores, store: WorkStore, settings: SegmentSettings, seconds: dict,
               progress: Callable[[int], None], processes: ReadProcesses | None = None) -> None:
    """Read, infer and stitch the ``bands`` of ``plan``, journalling each band when it is on disk
    (``scores``: the group's score canvas, or None when no exclusive label map is wanted).

    Blended: a band is journalled once every window touching it was added, so the windows of the
    bands next to ``bands`` run too (on resume, those of the last journalled band, again: the
    in-memory sums of its neighbour were lost), always in plan order. Batches hold one band's
    windows, so a resumed run feeds the engine the same batches as an uninterrupted one and its
    bytes are identical; a runner whose results do not depend on the batch (``batch_invariant``:
    a compiled engine, one padded batch size) gets full batches across bands instead, which a GPU
    needs (bands hold a few windows, its batches tens)."""
    written = (canvas,) if scores is None else (canvas, scores)
    for b in bands:
        if not plan.bands[b]:
            store.mark_done(plan.group, b, *written)  # no tissue in this band: nothing to compute
    todo = [b for b in bands if plan.bands[b]]
    if not todo:
        return
    blender = (Blender(plan, len(channels), todo, keep_weights=scores is not None, arrays=runner.arrays)
               if settings.blend == "gaussian" else None)
    run = [b for b in blender.bands_needed(todo) if plan.bands[b]] if blender else todo
    counted = set(todo)
    pending = deque(todo)  # bands not yet journalled, in order
    after = dict(zip(run, [*run[1:], len(plan.bands)]))  # band -> the next band that runs
    flat = [(b, spec) for b in run for spec in plan.bands[b]]  # every window to run, in plan order
    last = {b: i for i, (b, _) in enumerate(flat)}  # band -> index of its last window
    if runner.batch_invariant:  # full batches across bands: a window's result does not depend on its batch
        ranges = [(i, min(i + settings.batch, len(flat))) for i in range(0, len(flat), settings.batch)]
    else:  # per band, so that a resumed run feeds the engine exactly the same batches
        starts = [0, *(last[b] + 1 for b in run)]
        ranges = [(i, min(i + settings.batch, end)) for begin, end in zip(starts, starts[1:])
                  for i in range(begin, end, settings.batch)]
    ahead = max(settings.batch * (IN_FLIGHT + 1), 2 * settings.readers)
    resize = plan.window if runner.resizes else None  # windows resized on the engine's device, not here
    prefetch = (processes.prefetcher(ahead, resize is None) if processes
                else Prefetcher(reader, settings.readers, ahead, resize=resize is None))
    flight: deque = deque()

    def band_added(band: int) -> None:
        if blender is None:
            store.mark_done(plan.group, pending.popleft(), *written)
            return
        # every band that runs up to ``after[band]`` is in: finish those whose neighbours are all in
        while pending and min(pending[0] + blender.reach, len(plan.bands) - 1) < after[band]:
            done = pending.popleft()
            blender.finish(canvas, done, scores)
            store.mark_done(plan.group, done, *written)

    def collect() -> None:
        begin, end, ticket = flight.popleft()
        start = time.perf_counter()
        margins = ticket.result()
        seconds["infer"] += time.perf_counter() - start
        start = time.perf_counter()
        specs = [spec for _, spec in flat[begin:end]]
        if blender is None:
            stitch_windows(canvas, specs, margins, channels, scores, runner.arrays)
        else:
            for spec, window in zip(specs, margins):
                blender.add(spec, window[channels])
        for band in dict.fromkeys(b for b, _ in flat[begin:end]):  # bands whose last window is in this batch
            if begin <= last[band] < end:
                band_added(band)
        seconds["stitch"] += time.perf_counter() - start
        counted_here = sum(1 for b, _ in flat[begin:end] if b in counted)
        if counted_here:
            progress(counted_here)

    try:
        windows = prefetch.iterate(spec for _, spec in flat)
        for begin, end in ranges:
            pixels = np.stack([next(windows)[1] for _ in range(begin, end)])
            start = time.perf_counter()
            flight.append((begin, end, runner.submit_device(pixels, resize)))
            seconds["infer"] += time.perf_counter() - start
            if len(flight) >= IN_FLIGHT:
                collect()
        while flight:
            collect()
    finally:
        prefetch.close()
        seconds["read"] += prefetch.seconds
    assert not pending, f"bands left unfinished: {list(pending)}"


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
