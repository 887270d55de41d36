"""``build_engine``: a checkpoint or exported graph -> a ready-to-run engine directory.

Steps: resolve profile, backend and precision for this machine -> graphs (export the checkpoint,
or take the given graph) -> backend preparation (OpenVINO compile + cache, ONNX Runtime optimised
model, TensorRT plans, torch checkpoint copy) -> accuracy gate for reduced precision against the
fp32 graphs in ONNX Runtime -> manifest. Everything is built in a staging folder and renamed into
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

import numpy as np

from omniseg_rt import __version__
from omniseg_rt.calibration.gate import DEFAULT_MIN_DICE
from omniseg_rt.engines import registry
from omniseg_rt.hardware import cpu_summary, default_threads, nvidia_gpus
from omniseg_rt.engines.manifest import rebuild_command, write_engine_manifest
from omniseg_rt.engines.profiles import Profile, load_profile, validate
from omniseg_rt.errors import InvalidInputError, MissingFileError, OmnisegError, UsageError
from omniseg_rt.fileutil import sha256_file
from omniseg_rt.graph_manifest import read_manifest, write_manifest
from omniseg_rt.tissues import SCALE_GROUPS

log = logging.getLogger(__name__)
DEFAULT_DIR = Path("engines")
GATE_WINDOWS = 4


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
        target = graphs_dir / f"{graph.manifest['name']}.onnx"
        graph.path.rename(target)
        graph.manifest_path.unlink()
        write_manifest(target, graph.manifest)  # graph_file and graph_sha256 are set anew
    return [graphs_dir / f"{g.manifest['name']}.onnx" for g in exported]


def _check_backend(backend: str, precision: str, device: str, model: Path) -> None:
    if backend == "openvino":
        from omniseg_rt.engines.openvino_backend import check_precision

        check_precision(precision)
    elif backend == "onnxruntime":
        from omniseg_rt.engines.onnxruntime_backend import check_precision, providers_for

        providers_for(device)
        check_precision(precision, device)
    elif backend == "torch":
        from omniseg_rt.engines.torch_backend import check_precision, pick_device

        if model.suffix.lower() == ".onnx":
            raise InvalidInputError(f"{model}: the torch backend needs the checkpoint, not an exported graph")
        check_precision(precision, pick_device(device))
    elif backend == "tensorrt":
        from omniseg_rt.engines.tensorrt_backend import check_available

        check_available()
    if precision == "fp16" and backend == "onnxruntime" and device == "cpu":
        raise InvalidInputError("fp16 onnxruntime engines run on CUDA (--device cuda, onnxruntime-gpu); "
                                "on the CPU use fp32, int8, or --backend openvino")


def _resolve_device(backend: str, requested: str) -> str:
    """The device an ``auto`` device means for ``backend``: CUDA for TensorRT, torch's choice, else CPU."""
    if requested != "auto":
        return requested
    if backend == "torch":
        from omniseg_rt.engines.torch_backend import pick_device

        return pick_device("auto")
    return "cuda" if backend == "tensorrt" else "cpu"


def _versions(backend: str) -> dict[str, str]:
    import importlib

    module = importlib.import_module(f"omniseg_rt.engines.{backend}_backend")
    return {"omniseg_rt": __version__, **module.versions()}


def _reduced_precision_graphs(graphs: list[Path], precision: str, backend: str, calibration, method: str,
                              tool: str, staging: Path, notify) -> dict | None:
    """Replace the fp32 graphs by INT8 Q/DQ (int8) or FP16 (fp16 for ONNX Runtime / TensorRT)
    graphs; the fp32 graphs move to ``staging/reference`` for the accuracy gate."""
    if precision not in ("int8", "fp16") or (precision == "fp16" and backend not in ("onnxruntime", "tensorrt")):
        return None
    from omniseg_rt.calibration.fp16 import convert_fp16
    from omniseg_rt.calibration.int8 import quantize_int8

    (staging / "reference").mkdir()
    done = {}
    for graph in graphs:
        meta = read_manifest(graph)
        reference = staging / "reference" / graph.name
        shutil.move(graph, reference)
        shutil.move(graph.with_suffix(".json"), reference.with_suffix(".json"))
        if precision == "int8":
            windows = _calibration_windows(calibration, [t["task_id"] for t in meta["tissues"]], "calibration")
            notify(f"quantizing {meta['name']} to INT8 on {len(windows)} calibration windows ({tool}, {method})")
            info = quantize_int8(reference, windows, graph, method=method, tool=tool)
        else:
            notify(f"converting {meta['name']} to FP16")
            info = convert_fp16(reference, graph)
        write_manifest(graph, {**meta, "precision": precision, "reduced_from_fp32": info})
        done[meta["name"]] = info
    return done


def _rewrite_for_openvino(graphs: list[Path], notify) -> None:
    """The OpenVINO form of each graph (``graph_rewrites``: same function, no layout reorders),
    recorded in its sidecar under ``rewrites``."""
    from omniseg_rt.engines.graph_rewrites import rewrite_for_openvino

    for graph in graphs:
        meta = read_manifest(graph)
        notify(f"rewriting {meta['name']} for OpenVINO")
        done = rewrite_for_openvino(graph)
        write_manifest(graph, {**meta, "rewrites": done})


def _calibration_windows(calibration, tissues, part: str) -> np.ndarray:
    """The calibration set's ``part`` windows of every scale group holding one of ``tissues``."""
    from omniseg_rt.calibration.sampling import load_windows

    groups = [g.name for g in SCALE_GROUPS if any(t in g.task_ids for t in tissues)]
    return np.concatenate([load_windows(calibration, g, part) for g in groups])


def _gate(folder: Path, manifest: dict, threads: int, min_dice: float, notify, calibration=None) -> dict:
    """Run the candidate and the fp32 reference (ONNX Runtime CPU) on real windows (the
    calibration set's held-out part, else the bundled sample slide); raise if it fails."""
    from omniseg_rt.calibration.gate import run_gate
    from omniseg_rt.data import sample_windows
    from omniseg_rt.engines.loader import graph_specs, make_runner
    from omniseg_rt.engines.onnxruntime_backend import OnnxRuntimeRunner

    results, sources = [], set()
    for spec in graph_specs(manifest):
        if calibration is not None:
            windows = _calibration_windows(calibration, spec.tissues, "holdout")
            sources.add("held-out calibration windows")
        else:
            windows = sample_windows(GATE_WINDOWS, manifest["window"])
            sources.add("bundled sample slide")
        notify(f"accuracy gate: {spec.name} {manifest['precision']} vs fp32 on {len(windows)} windows")
        candidate = make_runner(folder, manifest, spec, threads)
        fp32 = folder / "reference" / Path(spec.file).name
        reference = OnnxRuntimeRunner(spec, fp32 if fp32.is_file() else folder / spec.file, threads,
                                      folder / "cache" / "reference")
        try:
            results.append(run_gate(list(spec.tissues), reference.infer, candidate.infer, windows, min_dice))
        finally:
            candidate.close()
            reference.close()
        shutil.rmtree(folder / "cache" / "reference", ignore_errors=True)
    rows = [row for result in results for row in result.rows]
    return {"threshold": results[0].threshold, "windows": sum(r.windows for r in results),
            "source": ", ".join(sorted(sources)),
            "reference": "fp32 graph in ONNX Runtime CPU", "passed": all(r.passed for r in results),
            "tissues": rows}


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
    calibration_method: str = "minmax",
    int8_tool: str = "onnxruntime",
    graph_rewrites: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build an engine directory for this machine; returns (path, manifest).

    Reduced precision (bf16, fp16, int8) must reach Dice >= ``min_dice`` against fp32 for every
    tissue. ``None`` options come from the profile (default: backend auto, precision auto, window 512).
    ``graph_rewrites=False`` keeps the exported graphs as they are (see ``graph_rewrites.py``).
    ``model=None``: the bundled demo model (its all-tissue graph where PyTorch is not installed).
    Raises InvalidInputError / MissingFileError before any work for bad arguments, and
    :class:`AccuracyGateError` (nothing written) when reduced precision fails the gate without
    ``force``.
    """
    notify = on_progress or (lambda message: None)
    source = Path(model) if model is not None else _default_model(tissues, backend)
    if not source.is_file():
        raise MissingFileError(f"{source}: no such checkpoint or graph")
    if not 0.0 < min_dice <= 1.0:
        raise InvalidInputError(f"--min-dice {min_dice}: must be in (0, 1]")
    settings = resolve_settings(profile, backend=backend, precision=precision, window=window, threads=threads,
                                device=device)
    chosen_backend = registry.auto_backend() if settings.backend == "auto" else settings.backend
    chosen_device = _resolve_device(chosen_backend, settings.device)
    chosen_precision = (registry.auto_precision(chosen_backend, chosen_device)
                        if settings.precision == "auto" else settings.precision)
    _check_backend(chosen_backend, chosen_precision, chosen_device, source)
    if chosen_precision == "int8" and calibration is None:
        raise InvalidInputError("int8 engines need real calibration windows: run omniseg-rt calibrate SLIDES... "
                                "--out calibration/NAME, then build --calibration calibration/NAME")
    if chosen_precision == "int8" and int8_tool == "nncf" and chosen_backend == "tensorrt":
        raise InvalidInputError("NNCF quantizes some activations as unsigned int8, which TensorRT does not take; "
                                "use --int8-tool onnxruntime (the default) for TensorRT engines")
    if calibration is not None and not (Path(calibration) / "manifest.json").is_file():
        raise MissingFileError(f"{calibration}: no calibration set here (manifest.json); make one with omniseg-rt calibrate")
    n_threads = settings.threads or default_threads()

    final = Path(out) if out else DEFAULT_DIR / f"{source.stem}-{chosen_backend}-{chosen_precision}"
    if final.exists() and not final.is_dir():
        raise UsageError(f"--out {final}: a file is in the way; an engine is a folder: name another one")
    remove_leftovers(final)
    staging = final.parent / f".{final.name}.{_WORK_TAG}building-{_process_tag()}"
    start = time.perf_counter()
    try:
        graphs = _source_graphs(source, tissues, settings.window, staging, notify)
        reduced = _reduced_precision_graphs(graphs, chosen_precision, chosen_backend, calibration,
                                            calibration_method, int8_tool, staging, notify)
        if chosen_backend == "openvino" and graph_rewrites:
            _rewrite_for_openvino(graphs, notify)
        metas = [read_manifest(graph) for graph in graphs]
        graph_entries = [
            {"name": meta["name"], "file": f"graphs/{graph.name}", "tissues": [t["task_id"] for t in meta["tissues"]],
             "scale_group": meta["scale_group"], "nominal_mpp": meta["nominal_mpp"],
             **({"rewrites": meta["rewrites"]} if "rewrites" in meta else {})}
            for graph, meta in zip(graphs, metas)
        ]
        if chosen_backend == "torch":
            shutil.copy2(source, staging / "model.pth")
        manifest: dict[str, Any] = {
            "backend": chosen_backend,
            "precision": chosen_precision,
            "graphs": graph_entries,
            "tissues": [t for g in graph_entries for t in g["tissues"]],
            "window": settings.window,
            "input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB"},
            "output": {"name": "logits", "dtype": "float32", "layout": "NTHW",
                       "meaning": "foreground minus background logit; foreground where > 0"},
            "source": {"path": str(source), "sha256": sha256_file(source),
                       "kind": "onnx" if source.suffix.lower() == ".onnx" else "checkpoint"},
            "family": metas[0]["family"],
            "profile": settings.as_dict(),
            "settings": {"threads": settings.threads, "device": chosen_device},
            "built_on": {"cpu": cpu_summary(), "gpus": list(nvidia_gpus())},
            "versions": _versions(chosen_backend),
            "rebuild": {"source": str(source), "backend": chosen_backend, "precision": chosen_precision,
                        "tissues": tissues, "profile": str(profile) if profile else None, "out": str(final),
                        "calibration": str(calibration) if calibration is not None else None,
                        "window": settings.window, "device": settings.device,
                        "calibration_method": calibration_method, "int8_tool": int8_tool, "min_dice": min_dice,
                        "graph_rewrites": graph_rewrites},
        }
        if chosen_backend == "tensorrt":
            from omniseg_rt.engines.tensorrt_backend import build_plans

            manifest.update(build_plans(staging, manifest, settings, notify))
        notify(f"preparing the {chosen_backend} engine ({chosen_precision})")
        from omniseg_rt.engines.loader import open_engine_unchecked

        open_engine_unchecked(staging, manifest, n_threads).close()  # compiles; fills the caches
        gate = None
        if chosen_precision != "fp32":
            gate = _gate(staging, manifest, n_threads, min_dice, notify, calibration)
            gate["forced"] = bool(force and not gate["passed"])
            if not gate["passed"] and not force:
                raise AccuracyGateError(
                    f"{source}: the {chosen_precision} {chosen_backend} engine disagrees with fp32 "
                    f"(Dice below {gate['threshold']} for "
                    f"{', '.join(r['abbrev'] for r in gate['tissues'] if r['dice'] < gate['threshold'])}); "
                    "nothing was written. Use --precision fp32, or --force to build it anyway "
                    "(recorded in the manifest)", gate)
        shutil.rmtree(staging / "reference", ignore_errors=True)  # fp32 graphs: the gate's reference only
        if reduced:
            manifest["reduced_precision"] = reduced
        files = {str(p.relative_to(staging)): sha256_file(p)
                 for p in sorted(staging.rglob("*")) if p.is_file() and p.parts[len(staging.parts)] != "cache"}
        manifest.update({
            "accuracy_gate": gate,
            "files": files,
            "build_seconds": round(time.perf_counter() - start, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        write_engine_manifest(staging, manifest)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built %s in %.1f s (%s)", final, manifest["build_seconds"], rebuild_command(manifest))
    return final, manifest


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
