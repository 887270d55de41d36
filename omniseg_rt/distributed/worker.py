"""The worker actor: one per GPU (or per N CPU cores); opens the engine once, runs slides with
the same pipeline as a local run, writes into the shared output folder."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path

from omniseg_rt.engines import Engine, build_engine, open_engine
from omniseg_rt.engines.manifest import rebuild_args
from omniseg_rt.errors import MissingFileError, OmnisegError
from omniseg_rt.runtime.pipeline import SlideResult, run_slide
from omniseg_rt.runtime.settings import SegmentSettings
from omniseg_rt.slide import slide_name

log = logging.getLogger(__name__)


def local_engine(engine_dir: Path, threads: int | None) -> tuple[Engine, str]:
    """Open ``engine_dir`` here, or -- when its manifest does not match this machine (TensorRT
    engines are per GPU type and version) -- build an equivalent engine beside it, once per
    machine kind, from the same source with the same choices (backend, precision, calibration set,
    profile, window, quantizer: ``rebuild_args``). Returns (engine, what was done)."""
    try:
        return open_engine(engine_dir, threads=threads), "opened"
    except OmnisegError as exc:
        reason = str(exc)
    import json

    manifest = json.loads((engine_dir / "manifest.json").read_text())
    rebuild = manifest.get("rebuild", {})
    source = Path(rebuild.get("source", ""))
    graphs = manifest.get("graphs", [])
    if not source.is_file() and len(graphs) == 1:
        source = engine_dir / graphs[0]["file"]
    if not source.is_file():
        raise MissingFileError(f"{engine_dir} does not run on {socket.gethostname()} ({reason}) and its source "
                               f"{rebuild.get('source')} is not reachable from there to rebuild it") from None
    local = engine_dir.with_name(f"{engine_dir.name}.{_machine_key()}")
    if not (local / "manifest.json").is_file():
        log.warning("%s: %s; building a local engine in %s", socket.gethostname(), reason, local)
        build_engine(**rebuild_args(manifest, source=str(source), out=str(local)), threads=threads)
    return open_engine(local, threads=threads), f"rebuilt for this machine ({reason})"


def _machine_key() -> str:
    from omniseg_rt.hardware import cpu_summary, nvidia_gpus

    gpus = nvidia_gpus()
    name = gpus[0]["name"] if gpus else cpu_summary()["name"]
    return "".join(c if c.isalnum() else "-" for c in str(name))[:40]


class SlideWorker:
    """Made a Ray actor by the scheduler (``ray.remote(SlideWorker)``); usable as is in tests."""

    def __init__(self, engine_dir: str, out: str, settings: SegmentSettings, threads: int | None) -> None:
        self.engine, self.engine_note = local_engine(Path(engine_dir), threads)
        self.out, self.settings = Path(out), settings

    def close(self) -> None:
        """Release the engine (device memory, CUDA context); the scheduler calls it when the worker
        has no more slides."""
        self.engine.close()

    def describe(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "engine": self.engine_note}

    def process(self, slide: str) -> dict:
        """One slide -> the SlideResult as a dict; a bad slide is a failed result, not an error."""
        try:
            result = run_slide(Path(slide), self.engine, self.out, self.settings, lambda event: None)
        except (OmnisegError, OSError) as exc:
            result = SlideResult(slide_name(Path(slide)), slide, "failed", reason=str(exc))
        return {**asdict(result), "host": socket.gethostname(), "pid": os.getpid()}
