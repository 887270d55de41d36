"""``build_engine``: a checkpoint or exported graph -> a ready-to-run engine directory.

Steps: resolve the request (profile, backend, device and precision for this machine, checked by
the backend) -> graphs (export the checkpoint, or take the given graph) -> reduced-precision graphs
(FP16, Q/DQ INT8) where the backend builds from them -> the backend's hooks (``prepare_graphs``,
``finish_build``: OpenVINO rewrites, TensorRT plans, torch checkpoint copy) -> open once (compiles,
fills caches) -> accuracy gate for reduced precision against the fp32 graphs in ONNX Runtime ->
manifest. Everything is built in a staging folder and renamed into
place at the end: an existing engine is replaced only by a complete new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from omniseg_rt import __version__
from omniseg_rt.calibration.gate import DEFAULT_MIN_DICE
from omniseg_rt.engines import registry
from omniseg_rt.engines.backend import BuildRequest
from omniseg_rt.engines.manifest import EngineManifest, GraphEntry, rebuild_command
from omniseg_rt.engines.profiles import Profile, load_profile, validate
from omniseg_rt.errors import InvalidInputError, MissingFileError, OmnisegError, UsageError
from omniseg_rt.fileutil import sha256_file
from omniseg_rt.graph_manifest import read_manifest, write_manifest
from omniseg_rt.hardware import cpu_summary, default_threads, nvidia_gpus

log = logging.getLogger(__name__)
DEFAULT_DIR = Path("engines")
#: the batch range of a torch engine on CUDA when no profile is given (issue 14, on an H200: eager
#: fp16 ran 411 windows/s at batch 32 against 256 at the CPU profiles' batch of 4)
GPU_BATCH = {"batch_min": 1, "batch_opt": 32, "batch_max": 64}


class AccuracyGateError(OmnisegError, RuntimeError):
    """A reduced-precision build disagreed with fp32 beyond the threshold (see ``.gate``)."""

    def __init__(self, message: str, gate: dict) -> None:
        super().__init__(message)
        self.gate = gate


def _default_model(tissues: str | None, backend: str | None) -> Path:
    """The bundled demo checkpoint where PyTorch is installed (one graph per scale group), else --
    on the torch-free serving install -- the bundled all-tissue graph of the same model."""
    from omniseg_rt.data import demo_graph, demo_model

    if tissues is not None or backend == "torch" or _torch_installed():
        return demo_model()
    log.info("PyTorch is not installed: building from the bundled all-tissue graph of the demo model")
    return demo_graph()


def _torch_installed() -> bool:
    import importlib.util
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    return importlib.util.find_spec("torch") is not None


def resolve_settings(profile: str | os.PathLike | None, **overrides: Any) -> Profile:
    """The profile (shipped name, TOML path or defaults) with explicit options laid over it."""
    base = load_profile(profile) if profile else Profile()
    given = {k: v for k, v in overrides.items() if v is not None}
    return validate(replace(base, **given), f"profile {base.name}")


def _source_graphs(model: Path, tissues: str | None, window: int, staging: Path, notify) -> list[Path]:
    """The fp32 graphs of the engine, written under ``staging/graphs``."""
    graphs_dir = staging / "graphs"
    graphs_dir.mkdir(parents=True)
    if model.suffix.lower() == ".onnx":
        if tissues is not None:
            raise InvalidInputError(f"{model}: --tissues applies to checkpoints; a graph's tissue set is fixed")
        read_manifest(model)  # checks the sidecar and the graph's hash
        for source in (model, model.with_suffix(".json")):
            shutil.copy2(source, graphs_dir / source.name)
        return [graphs_dir / model.name]
    from omniseg_rt.export import export_graphs

    notify("exporting graphs")
    exported = export_graphs(model, tissues=tissues, out=graphs_dir, window=window,
                             on_progress=notify)
    for graph in exported:  # engine-local names: graphs/<set>.onnx, sidecar rewritten to match
        target = graphs_dir / f"{graph.manifest.name}.onnx"
        graph.path.rename(target)
        graph.manifest_path.unlink()
        write_manifest(target, graph.manifest)  # graph_file and graph_sha256 are set anew
    return [graphs_dir / f"{g.manifest.name}.onnx" for g in exported]


def _reduced_precision_graphs(graphs: list[Path], request: BuildRequest, staging: Path, notify) -> dict | None:
    """Replace the fp32 graphs by INT8 Q/DQ (int8) or FP16 (fp16) graphs where the backend builds
    that precision from the graph; the fp32 graphs move to ``staging/reference`` for the gate."""
    precision, calibration = request.precision, request.calibration
    method, tool = request.calibration_method, request.int8_tool
    if precision not in registry.backend(request.backend).GRAPH_PRECISIONS:
        return None
    from omniseg_rt.calibration.fp16 import convert_fp16
    from omniseg_rt.calibration.int8 import quantize_int8
    from omniseg_rt.calibration.sampling import calibration_windows

    (staging / "reference").mkdir()
    done = {}
    for graph in graphs:
        meta = read_manifest(graph)
        reference = staging / "reference" / graph.name
        shutil.move(graph, reference)
        shutil.move(graph.with_suffix(".json"), reference.with_suffix(".json"))
        if precision == "int8":
            windows = calibration_windows(calibration, meta.task_ids, "calibration")
            notify(f"quantizing {meta.name} to INT8 on {len(windows)} calibration windows ({tool}, {method})")
            keep = tuple(k for k in request.int8_keep_float.split(",") if k) if request.int8_keep_float else None
            info = quantize_int8(reference, windows, graph, method=method, tool=tool, keep_float=keep)
        else:
            notify(f"converting {meta.name} to FP16")
            info = convert_fp16(reference, graph)
        meta.precision, meta.reduced_from_fp32 = precision, info
        write_manifest(graph, meta)
        done[meta.name] = info
    return done


def build_engine(
    model: str | os.PathLike | None = None,
    precision: str | None = None,
    backend: str | None = None,
    tissues: str | None = None,
    profile: str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    window: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    force: bool = False,
    min_dice: float = DEFAULT_MIN_DICE,
    calibration_method: str = "percentile",
    int8_tool: str = "onnxruntime",
    int8_keep_float: str | None = None,
    graph_rewrites: bool = True,
    compile: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[Path, EngineManifest]:
    """Build an engine directory for this machine; returns (path, manifest).

    Reduced precision (bf16, fp16, int8) must reach Dice >= ``min_dice`` against fp32 for every
    tissue. ``None`` options come from the profile (default: backend auto, precision auto, window 512).
    ``graph_rewrites=False`` keeps the exported graphs as they are (see ``graph_rewrites.py``).
    ``int8_keep_float``: convolutions int8 leaves float, comma-separated ("first", "last", node-name
    prefixes; default ``calibration.int8.KEEP_FLOAT``).
    ``compile``: torch backend, ``torch.compile`` mode (``default`` or ``max-autotune``); the
    kernels are compiled during the build into the engine's ``cache/`` (see ``torch_backend``) and
    the engine is gated against fp32 like a reduced-precision one.
    ``model=None``: the bundled demo model (its all-tissue graph where PyTorch is not installed).
    Raises InvalidInputError / MissingFileError before any work for bad arguments, and
    :class:`AccuracyGateError` (nothing written) when reduced precision fails the gate without
    ``force``.
    """
    notify = on_progress or (lambda message: None)
    request = resolve_request(model, precision=precision, backend=backend, tissues=tissues, profile=profile,
                              calibration=calibration, window=window, threads=threads, device=device,
                              min_dice=min_dice, calibration_method=calibration_method, int8_tool=int8_tool,
                              graph_rewrites=graph_rewrites, int8_keep_float=int8_keep_float, compile=compile)
    hooks = registry.backend(request.backend)
    n_threads = request.settings.threads or default_threads()
    final = Path(out) if out else DEFAULT_DIR / (f"{request.source.stem}-{request.backend}-{request.precision}"
                                                 + ("-compiled" if request.compile else ""))
    if final.exists() and not final.is_dir():
        raise UsageError(f"--out {final}: a file is in the way; an engine is a folder: name another one")
    remove_leftovers(final)
    staging = final.parent / f".{final.name}.{_WORK_TAG}building-{_process_tag()}"
    start = time.perf_counter()
    try:
        graphs = _source_graphs(request.source, request.tissues, request.settings.window, staging, notify)
        reduced = _reduced_precision_graphs(graphs, request, staging, notify)
        hooks.prepare_graphs(graphs, request, notify)
        manifest = _manifest(request, graphs, profile, final, min_dice)
        hooks.finish_build(staging, manifest, request, notify)
        notify(f"preparing the {request.backend} engine ({request.precision})")
        from omniseg_rt.calibration.gate import gate_engine
        from omniseg_rt.engines.loader import open_engine_unchecked

        open_engine_unchecked(staging, manifest, n_threads).close()  # compiles; fills the caches
        gate = None
        if request.precision != "fp32" or request.compile:
            gate = gate_engine(staging, manifest, n_threads, min_dice, notify, request.calibration)
            gate["forced"] = bool(force and not gate["passed"])
            if not gate["passed"] and not force:
                raise AccuracyGateError(
                    f"{request.source}: the {request.precision} {request.backend} engine disagrees with fp32 "
                    f"(Dice below {gate['threshold']} for "
                    f"{', '.join(r['abbrev'] for r in gate['tissues'] if r['dice'] < gate['threshold'])}); "
                    "nothing was written. Use --precision fp32, or --force to build it anyway "
                    "(recorded in the manifest)", gate)
        shutil.rmtree(staging / "reference", ignore_errors=True)  # fp32 graphs: the gate's reference only
        manifest.reduced_precision = reduced or None
        manifest.accuracy_gate = gate
        manifest.files = {str(p.relative_to(staging)): sha256_file(p)
                          for p in sorted(staging.rglob("*")) if p.is_file() and p.parts[len(staging.parts)] != "cache"}
        manifest.build_seconds = round(time.perf_counter() - start, 2)
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.write(staging)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built %s in %.1f s (%s)", final, manifest.build_seconds, rebuild_command(manifest))
    return final, manifest


def resolve_request(model: str | os.PathLike | None, *, precision: str | None, backend: str | None,
                    tissues: str | None, profile: str | os.PathLike | None, calibration: str | os.PathLike | None,
                    window: int | None, threads: int | None, device: str | None, min_dice: float,
                    calibration_method: str, int8_tool: str, graph_rewrites: bool,
                    int8_keep_float: str | None = None, compile: str | None = None) -> BuildRequest:
    """Step 1 of a build: the profile with the options laid over it, ``auto`` resolved for this
    machine, and everything checked that can be checked before any work (raises)."""
    source = Path(model) if model is not None else _default_model(tissues, backend)
    if not source.is_file():
        raise MissingFileError(f"{source}: no such checkpoint or graph")
    if not 0.0 < min_dice <= 1.0:
        raise InvalidInputError(f"--min-dice {min_dice}: must be in (0, 1]")
    settings = resolve_settings(profile, backend=backend, precision=precision, window=window, threads=threads,
                                device=device)
    chosen_backend = registry.auto_backend() if settings.backend == "auto" else settings.backend
    hooks = registry.backend(chosen_backend)
    if compile is not None and chosen_backend != "torch":
        raise InvalidInputError(f"--compile {compile}: torch.compile applies to --backend torch, not {chosen_backend}")
    chosen_device = hooks.resolve_device(settings.device)
    if profile is None and chosen_device == "cuda" and chosen_backend == "torch":
        settings = replace(settings, **GPU_BATCH)  # a data-centre GPU needs tens of windows per batch
    chosen_precision = (registry.auto_precision(chosen_backend, chosen_device)
                        if settings.precision == "auto" else settings.precision)
    request = BuildRequest(source=source, backend=chosen_backend, precision=chosen_precision, device=chosen_device,
                           settings=settings, tissues=tissues,
                           calibration=Path(calibration) if calibration is not None else None,
                           calibration_method=calibration_method, int8_tool=int8_tool, graph_rewrites=graph_rewrites,
                           int8_keep_float=int8_keep_float or None, compile=compile)
    hooks.check_request(request)
    if chosen_precision == "int8" and calibration is None:
        raise InvalidInputError("int8 engines need real calibration windows: run omniseg-rt calibrate SLIDES... "
                                "--out calibration/NAME, then build --calibration calibration/NAME")
    if calibration is not None and not (Path(calibration) / "manifest.json").is_file():
        raise MissingFileError(f"{calibration}: no calibration set here (manifest.json); make one with omniseg-rt calibrate")
    return request


def _manifest(request: BuildRequest, graphs: list[Path], profile, final: Path, min_dice: float) -> EngineManifest:
    """The engine manifest's description of what was built, from what, where, and how to rebuild it."""
    metas = [read_manifest(graph) for graph in graphs]
    settings, source = request.settings, request.source
    return EngineManifest(
        backend=request.backend,
        precision=request.precision,
        graphs=[GraphEntry(name=meta.name, file=f"graphs/{graph.name}", tissues=meta.task_ids,
                           scale_group=meta.scale_group, nominal_mpp=meta.nominal_mpp, rewrites=meta.rewrites)
                for graph, meta in zip(graphs, metas)],
        window=settings.window,
        source={"path": str(source), "sha256": sha256_file(source),
                "kind": "onnx" if source.suffix.lower() == ".onnx" else "checkpoint"},
        family=metas[0].family,
        profile=settings.as_dict(),
        settings={"threads": settings.threads, "device": request.device},
        built_on={"cpu": cpu_summary(), "gpus": list(nvidia_gpus())},
        versions={"omniseg_rt": __version__, **registry.backend(request.backend).versions()},
        rebuild={"source": str(source), "backend": request.backend, "precision": request.precision,
                 "tissues": request.tissues, "profile": str(profile) if profile else None, "out": str(final),
                 "calibration": str(request.calibration) if request.calibration is not None else None,
                 "window": settings.window, "device": settings.device,
                 "calibration_method": request.calibration_method, "int8_tool": request.int8_tool,
                 "int8_keep_float": request.int8_keep_float, "compile": request.compile,
                 "min_dice": min_dice, "graph_rewrites": request.graph_rewrites},
    )


_WORK_TAG = "omniseg-"  # marks the folders a build works in beside its engine, so only those are cleaned


def _process_tag() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())
    return f"{host}-{os.getpid()}"


def remove_leftovers(final: Path) -> list[Path]:
    """Remove the staging and old-engine folders beside ``final`` left by builds on this host
    whose process is gone (killed during a build); returns what was removed."""
    from omniseg_rt.folder_lock import process_is_alive

    host = _process_tag().rsplit("-", 1)[0]
    removed = []
    for kind in ("building", "old"):
        for folder in final.parent.glob(f".{final.name}.{_WORK_TAG}{kind}-{host}-*"):
            pid = folder.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not process_is_alive(int(pid)):
                log.warning("removing %s, left by a build (PID %s) that did not finish", folder, pid)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _swap_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging``; the old engine is deleted only once the new one is in place."""
    old = final.with_name(f".{final.name}.{_WORK_TAG}old-{_process_tag()}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
