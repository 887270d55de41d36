"""Slides over a Ray cluster: one worker actor per GPU or per ``worker_cpus`` CPU cores, one slide
at a time each; a slide whose worker dies is retried on another (resuming from its journal), a
slide that fails by itself is recorded once. The driver alone writes ``summary.csv``."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from pathlib import Path

from omniseg_rt.distributed.cluster import connect
from omniseg_rt.distributed.worker import SlideWorker
from omniseg_rt.engines import open_engine
from omniseg_rt.runtime.pipeline import SlideResult
from omniseg_rt.runtime.segment import check_request, make_settings, open_default_engine, output_folder, record
from omniseg_rt.slide import find_slides, slide_name

log = logging.getLogger(__name__)
MAX_WORKER_DEATHS = 3  # per slide: after that it is recorded as failed, not retried forever


def segment_on_ray(
    slides: str | os.PathLike | Iterable[str | os.PathLike],
    address: str = "local",
    engine: str | os.PathLike | None = None,
    out: str | os.PathLike = "segmentations",
    worker_cpus: int | None = None,
    num_cpus: int | None = None,
    on_progress: Callable[[dict], None] | None = None,
    **options,
) -> list[SlideResult]:
    """:func:`omniseg_rt.segment` on Ray (``address``: ``local`` or a cluster's address).

    ``worker_cpus``: CPU cores per worker on CPU clusters (default 4, at most the cluster's);
    GPU clusters get one worker per GPU. ``num_cpus``: size of a ``local`` cluster. Other keyword
    arguments are :func:`omniseg_rt.segment`'s. ``engine`` and ``out`` must be paths every worker
    sees (shared storage); an engine that does not match a worker's machine is rebuilt there.
    """
    notify = on_progress or (lambda event: None)
    paths = find_slides([slides] if isinstance(slides, (str, os.PathLike)) else list(slides))
    checked = ("tissues", "mpp", "overlap", "batch", "readers", "read_with", "write_processes", "write_slides",
               "window", "blend")
    check_request(**{k: v for k, v in options.items() if k in checked})
    # the driver holds the output folder's lock for the whole run; its workers write under it
    with output_folder(out, options.pop("wait", False)) as out_root:
        # settings are checked here, before the cluster starts
        with open_engine(engine) if engine is not None else open_default_engine(notify) as probe:
            engine_dir = Path(probe.path)
            settings = make_settings(probe.manifest, **options)
        return _run_on_ray(ray_address=address, num_cpus=num_cpus, worker_cpus=worker_cpus, paths=paths,
                           engine_dir=engine_dir, out_root=out_root.resolve(), settings=settings, notify=notify)


def _run_on_ray(ray_address, num_cpus, worker_cpus, paths, engine_dir: Path, out_root: Path, settings,
                notify) -> list[SlideResult]:
    ray = connect(ray_address, num_cpus)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, min(worker_cpus or 4, int(resources.get("CPU", 1))))
        count = gpus or max(1, int(resources.get("CPU", 1)) // cpus)
        actor = ray.remote(num_cpus=cpus if not gpus else 1, num_gpus=1 if gpus else 0)(SlideWorker)
        count = min(count, len(paths))

        def spawn():
            return actor.remote(str(engine_dir.resolve()), str(out_root), settings, None if gpus else cpus)

        workers = [spawn() for _ in range(count)]
        log.info("%d Ray workers (%s each)", count, "1 GPU" if gpus else f"{cpus} CPUs")
        return _schedule(ray, paths, workers, spawn, out_root, notify)
    finally:
        ray.shutdown()


def _schedule(ray, paths, workers, spawn, out_root: Path, notify) -> list[SlideResult]:
    queue, running, results, closing = deque(paths), {}, {}, []
    deaths: Counter = Counter()
    start, windows = time.perf_counter(), 0

    def launch(worker) -> None:
        path = queue.popleft()
        notify({"event": "slide", "slide": slide_name(path), "index": len(results), "slides": len(paths)})
        running[worker.process.remote(str(path))] = (worker, path)

    for worker in workers:
        if queue:
            launch(worker)
        else:
            closing.append(worker.close.remote())
    while running:
        [ready], _ = ray.wait(list(running), num_returns=1)
        worker, path = running.pop(ready)
        try:
            payload = ray.get(ready)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            deaths[path] += 1
            log.warning("the worker on %s died (%s); %s", path, type(exc).__name__,
                        "retrying elsewhere" if deaths[path] < MAX_WORKER_DEATHS else "giving up")
            worker = spawn()  # a fresh actor replaces the dead one
            if deaths[path] < MAX_WORKER_DEATHS:
                queue.appendleft(path)
            else:
                results[path] = SlideResult(slide_name(path), str(path), "failed",
                                            reason=f"its worker died {deaths[path]} times ({type(exc).__name__})")
        except ray.exceptions.RayTaskError as exc:  # a bug, not a bad slide: recorded, not retried
            results[path] = SlideResult(slide_name(path), str(path), "failed", reason=str(exc.cause or exc))
        else:
            known = {f.name for f in fields(SlideResult)}
            results[path] = SlideResult(**{k: v for k, v in payload.items() if k in known})
        if path in results:
            result = results[path]
            record(out_root, result)
            windows += sum(result.windows.values()) if result.status == "done" else 0
            elapsed = time.perf_counter() - start
            notify({"event": "slide_done", **asdict(result), "retries": deaths[path],
                    "cluster_windows_per_s": windows / elapsed if elapsed else 0.0})
        if queue:
            launch(worker)
        else:  # no more work for it: release its engine (GPU memory, CUDA context) now
            closing.append(worker.close.remote())
    for done in closing:
        try:
            ray.get(done)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError) as exc:
            log.warning("a worker could not close its engine (%s)", type(exc).__name__)
    return [results[p] for p in paths]
