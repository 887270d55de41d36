"""``segment``: many slides, one engine; failures recorded per slide, the others go on."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

from omniseg_rt.engines import Engine, open_engine
from omniseg_rt.engines.manifest import EngineManifest, read_engine_manifest
from omniseg_rt.errors import InvalidInputError, OmnisegError, UsageError
from omniseg_rt.fileutil import temp_path
from omniseg_rt.folder_lock import FolderLock
from omniseg_rt.hardware import default_threads
from omniseg_rt.outputs import check_summary_csv, update_summary_csv
from omniseg_rt.runtime.finish import remove_temp_files
from omniseg_rt.runtime.pipeline import PendingWrite, SlideResult, compute_slide
from omniseg_rt.runtime.request import read_complete_manifest
from omniseg_rt.runtime.settings import DEFAULT_BLEND, DEFAULT_OVERLAP, SegmentSettings
from omniseg_rt.runtime.readers import READ_WITH
from omniseg_rt.runtime.stitch import BLEND_MODES
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
    blend: str | None = None,
    exclusive: bool = False,
    batch: int | None = None,
    readers: int = 2,
    read_with: str = "threads",
    write_processes: int | None = None,
    write_slides: int | None = None,
    window: int | None = None,
    group_mpp: dict[str, float] | None = None,
    resume: bool = True,
    force: bool = False,
    wait: bool = False,
    on_progress: Callable[[dict], None] | None = None,
) -> list[SlideResult]:
    """Segment ``slides`` (files, folders, DICOM folders) into ``out/<slide name>/``.

    ``engine``: an engine directory or an open :class:`Engine` (default: the bundled demo
    model's CPU engine, built once and cached); ``tissues``: "all", abbreviations ("CAP,TUFT"),
    groups ("5x") or task ids; ``mpp``: the slides' level-0 pixel size when they lack one or state
    it wrongly; ``group_mpp``: target um/px per scale group (default: the tissues table's nominal
    5x 2.0, 10x 1.0, 40x 0.25); ``overlap``/``window``: group pixels; ``blend``: how overlapping
    windows combine, "gaussian" (default) or "none" (centre crops); ``exclusive``: also write one
    label per pixel across tissues (labels.ome.tif, objects_exclusive.geojson); ``batch``: windows per
    engine call (default: the engine profile's); ``readers`` windows are read at once, on threads
    or (``read_with="processes"``) worker processes, which a GPU engine needs to stay busy;
    ``write_processes`` trace the polygons while outputs are written (default: a quarter of the
    cores, at most 8: none on small machines, where they would take the engine's); ``write_slides``
    slides are written at once while the next computes (default 1 + cores / 8, at most 4). A
    slide already complete for this request is skipped; missing tissues are added; a slide
    complete for other settings fails unless ``force`` (which redoes it for exactly this request).

    One run writes into ``out`` at a time (:class:`~omniseg_rt.folder_lock.FolderLock`): another
    run's lock raises :class:`~omniseg_rt.errors.BusyError`, or is waited for with ``wait``.

    Returns one :class:`SlideResult` per slide (status done / skipped / failed, with the reason).
    Bad arguments raise (:class:`~omniseg_rt.errors.UsageError`) before any slide is touched; a bad
    slide is recorded and the others go on.
    """
    notify = on_progress or (lambda event: None)
    paths = find_slides([slides] if isinstance(slides, (str, os.PathLike)) else list(slides))
    check_request(tissues=tissues, mpp=mpp, overlap=overlap, batch=batch, readers=readers, window=window,
                  engine=engine, blend=blend, read_with=read_with, write_processes=write_processes,
                  write_slides=write_slides)
    with output_folder(out, wait) as out_root:
        own = not isinstance(engine, Engine)
        if engine is None:
            handle = open_default_engine(notify)
        else:
            handle = open_engine(engine) if own else engine
        try:
            settings = make_settings(handle.manifest, tissues=tissues, mpp=mpp, overlap=overlap, blend=blend,
                                     exclusive=exclusive, batch=batch,
                                     readers=readers, read_with=read_with, write_processes=write_processes,
                                     write_slides=write_slides, window=window, group_mpp=group_mpp, resume=resume, force=force)
            return _run_slides(paths, handle, out_root, settings, notify)
        finally:
            if own:
                handle.close()


def _run_slides(paths: list[Path], engine: Engine, out_root: Path, settings: SegmentSettings,
                notify: Callable[[dict], None]) -> list[SlideResult]:
    """Compute the slides one after the other; write each one's outputs on a writer thread while
    the next is computed (``settings.write_slides`` slides writing at most, and one computing).
    A writer also records its slide's row in ``summary.csv`` right after the outputs (a kill -9
    loses no finished slide's row; rows are kept sorted by slide); results and progress come in
    slide order, from this thread."""
    results: list[SlideResult] = []
    tracers = _TracingPool(settings.write_processes)
    summary_lock = threading.Lock()  # one summary.csv update at a time

    def write(path: Path, outcome: SlideResult | PendingWrite) -> SlideResult:
        if isinstance(outcome, PendingWrite):
            try:
                outcome = outcome.write(tracers.pool)
            except BrokenProcessPool as exc:  # a tracing process died: this slide fails, the next gets a new pool
                tracers.renew()
                outcome = _failed(path, TracingWorkerError(
                    f"a polygon-tracing process died while writing the outputs ({exc or 'killed'}); every band is "
                    "computed and kept: run the same command again to write them (with --write-processes 0 if "
                    "it happens again)"))
            except (OmnisegError, OSError) as exc:
                outcome = _failed(path, exc)
        with summary_lock:
            record(out_root, outcome)
        return outcome

    def finish(future: Future) -> None:
        result = future.result()
        notify({"event": "slide_done", **asdict(result)})
        results.append(result)

    with ThreadPoolExecutor(max_workers=settings.write_slides, thread_name_prefix="omniseg-write") as writer, tracers:
        writing: deque[Future] = deque()
        try:
            for index, path in enumerate(paths):
                notify({"event": "slide", "slide": slide_name(path), "index": index, "slides": len(paths)})
                try:
                    outcome = compute_slide(path, engine, out_root, settings, notify)
                except (OmnisegError, OSError) as exc:
                    outcome = _failed(path, exc)
                while len(writing) >= settings.write_slides:
                    finish(writing.popleft())
                writing.append(writer.submit(write, path, outcome))
        finally:  # also when interrupted (Ctrl-C) or failing: the slides being written are finished and recorded
            while writing:
                finish(writing.popleft())
    return results


class TracingWorkerError(OmnisegError, RuntimeError):
    """A polygon-tracing process died (crashed, killed, out of memory) while a slide was written."""


class _TracingPool:
    """The spawned processes that trace polygons (``processes``; none when 0), made anew after
    one of them died (a broken pool takes no more work)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor | None:
        if not self.processes:
            return None
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))

    def renew(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._start()

    def __enter__(self) -> _TracingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def default_write_slides() -> int:
    """Slides written at once by default: one, plus one per 8 cores, at most 4 (a fast GPU engine
    computes a slide in less time than one core writes it)."""
    return min(4, 1 + default_threads() // 8)


def default_write_processes(gpu: bool = False) -> int:
    """Polygon-tracing processes by default: a quarter of the cores, at most 8 (0 on 1-3 cores);
    half of them for an engine on a GPU, which leaves the cores to reading and writing (on the
    H200 machine, writing a 20480^2 px slide took about as long as the pipeline spent per slide,
    26 of 27 s, with a quarter)."""
    return min(8, default_threads() // (2 if gpu else 4))


def _failed(path: Path, exc: BaseException) -> SlideResult:
    log.info("%s failed: %s", path, exc)
    return SlideResult(slide_name(path), str(path), "failed", reason=_one_line(exc, path))


def open_default_engine(notify: Callable[[dict], None]) -> Engine:
    from omniseg_rt.runtime import default_engine

    return default_engine.open_default_engine(lambda message: notify({"event": "build", "message": message}))


#: level-0 pixel sizes a slide can have (um/px): from beyond oil-immersion 100x to a macro photo
MPP_RANGE = (0.05, 100.0)


def check_request(tissues=None, mpp=None, overlap=None, batch=None, readers=2, window=None, engine=None,
                  blend=None, read_with="threads", write_processes=None, write_slides=None) -> None:
    """Raise :class:`UsageError` for option values that cannot work, before anything else happens
    (``engine``: a path or an open engine, whose window bounds the overlap)."""
    if isinstance(tissues, str) or tissues is None:
        try:
            parse_tissues("all" if tissues is None else tissues)
        except InvalidInputError as exc:
            raise UsageError(f"--tissues {tissues!r}: {exc}") from None
    elif not tissues:
        raise UsageError("tissues: an empty selection; give task ids, abbreviations, a group or 'all'")
    if mpp is not None and not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise UsageError(f"--mpp {mpp}: a slide's level-0 pixel size is between {MPP_RANGE[0]} and {MPP_RANGE[1]:g} "
                         "um/px (0.25 at 40x, 0.5 at 20x); give the one the scanner used")
    for name, value, low in (("--batch", batch, 1), ("--readers", readers, 1), ("--overlap", overlap, 0),
                             ("--window", window, 64), ("--write-processes", write_processes, 0),
                             ("--write-slides", write_slides, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"{name} {value}: must be a whole number >= {low}")
    if read_with not in READ_WITH:
        raise UsageError(f"--read-with {read_with!r}: choose {' or '.join(READ_WITH)}")
    if blend is not None and blend not in BLEND_MODES:
        raise UsageError(f"--blend {blend!r}: choose {' or '.join(BLEND_MODES)}")
    if overlap is not None and overlap % 2:
        raise UsageError(f"--overlap {overlap}: must be even (the context is split between both sides)")
    side = window or _engine_window(engine)
    if overlap is not None and side and overlap >= side // 2:
        raise UsageError(f"--overlap {overlap}: must be under half the window ({side // 2})")


def _engine_window(engine) -> int | None:
    """The window of ``engine`` (an open engine or an engine directory), None when unknown."""
    if engine is None:
        return None
    if isinstance(engine, Engine):
        return engine.manifest.window
    try:
        return read_engine_manifest(engine, verify_files=False).window
    except OmnisegError:
        return None  # opening the engine names what is wrong


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, wait: bool = False) -> Iterator[Path]:
    """``out`` created and locked for this run, its ``summary.csv`` checked and the temporary
    files of killed runs removed; raises before any work when it cannot be used."""
    out_root = Path(out)
    if out_root.exists() and not out_root.is_dir():
        raise UsageError(f"--out {out_root}: a file is in the way; name a folder (it is created if needed)")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = temp_path(out_root / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out_root}: cannot write there ({exc.strerror or exc}); choose a folder you can "
                         "write to") from None
    with FolderLock(out_root, what="output folder", wait=wait,
                    fix="wait for it to finish, add --wait to start when it does, or choose another --out"):
        check_summary_csv(out_root / "summary.csv")
        remove_temp_files(out_root)
        yield out_root


def _one_line(exc: BaseException, path: Path) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, OmnisegError) and not exc.filename:
        text = f"{path}: {text}"
    return text


def make_settings(manifest: EngineManifest, tissues=None, mpp=None, overlap=None, batch=None, readers=2,
                  window=None, group_mpp=None, resume=True, force=False, blend=None,
                  exclusive=False, read_with="threads", write_processes=None, write_slides=None) -> SegmentSettings:
    """Checked settings for an engine with ``manifest`` (window and batch default to its profile's)."""
    check_request(tissues=tissues, mpp=mpp, overlap=overlap, batch=batch, readers=readers, window=window,
                  blend=blend, read_with=read_with, write_processes=write_processes, write_slides=write_slides)
    if tissues is None or isinstance(tissues, str):
        task_ids = tuple(t.task_id for t in parse_tissues("all" if tissues is None else tissues))
    else:
        task_ids = tuple(sorted({int(t) for t in tissues}))
    targets = {g.name: g.nominal_mpp for g in SCALE_GROUPS}
    unknown = set(group_mpp or {}) - set(targets)
    if unknown:
        raise InvalidInputError(f"group_mpp: unknown scale groups {sorted(unknown)}; known: {sorted(targets)}")
    targets.update({k: float(v) for k, v in (group_mpp or {}).items()})
    settings = SegmentSettings(
        tissues=task_ids, mpp=mpp, group_mpp=targets, window=window or manifest.window,
        overlap=DEFAULT_OVERLAP if overlap is None else overlap, blend=DEFAULT_BLEND if blend is None else blend,
        exclusive=bool(exclusive),
        batch=batch if batch is not None else int(manifest.profile.get("batch_opt", 4)), readers=readers,
        read_with=read_with,
        write_processes=(default_write_processes(manifest.device == "cuda" or manifest.backend == "tensorrt")
                         if write_processes is None else write_processes),
        write_slides=default_write_slides() if write_slides is None else write_slides,
        resume=resume, force=force)
    if settings.window % 16 or settings.window < 64:
        raise UsageError(f"window {settings.window}: must be a multiple of 16, at least 64")
    if settings.overlap >= settings.window // 2:
        raise UsageError(f"--overlap {settings.overlap}: must be under half the window ({settings.window // 2})")
    return settings


def record(out_root: Path, result: SlideResult) -> None:
    """The slide's row in ``out_root/summary.csv``. Skipped slides keep the row they have, and so
    do failed slides whose earlier outputs are still complete (a failure never replaces a done
    row). A summary that cannot be written is logged, not raised: the slides go on."""
    if result.status == "skipped":
        return
    if result.status == "failed" and read_complete_manifest(out_root / result.slide) is not None:
        log.info("%s: failed, but its earlier complete outputs are kept, and so is its summary row", result.slide)
        return
    row = {"slide": result.slide, "status": result.status, "reason": result.reason or "", "path": result.path}
    for t in result.summary.get("tissues", []):
        row[f"{t['abbrev']}_objects"] = t["objects"]
        row[f"{t['abbrev']}_area_mm2"] = round(t["area_mm2"], 5)
    if result.summary:
        row["tissue_area_mm2"] = result.summary.get("tissue_area_mm2")
    if result.seconds:
        row["seconds"] = result.seconds.get("total")
    try:
        update_summary_csv(out_root / "summary.csv", row)
    except OmnisegError as exc:
        log.error("%s: its row in summary.csv was not updated: %s", result.slide, exc)
