"""``open_engine``: an engine directory -> an :class:`Engine`, after checking it fits this machine."""

from __future__ import annotations

import os
from pathlib import Path

from omniseg_rt.engines.base import Engine, GraphRunner, GraphSpec
from omniseg_rt.hardware import default_threads
from omniseg_rt.engines.manifest import read_engine_manifest, rebuild_command
from omniseg_rt.errors import InvalidInputError


def graph_specs(manifest: dict) -> list[GraphSpec]:
    return [
        GraphSpec(name=g["name"], tissues=tuple(g["tissues"]), scale_group=g.get("scale_group"),
                  nominal_mpp=g.get("nominal_mpp"), file=g["file"])
        for g in manifest["graphs"]
    ]


def make_runner(folder: Path, manifest: dict, spec: GraphSpec, threads: int | None = None) -> GraphRunner:
    """The backend runner for one graph of an engine directory (backends imported lazily)."""
    backend, precision = manifest["backend"], manifest["precision"]
    settings = manifest.get("settings", {})
    threads = threads or settings.get("threads") or default_threads()
    cache = folder / "cache"
    if backend == "openvino":
        from omniseg_rt.engines.openvino_backend import OpenVINORunner

        return OpenVINORunner(spec, folder / spec.file, precision, threads, cache)
    if backend == "onnxruntime":
        from omniseg_rt.engines.onnxruntime_backend import OnnxRuntimeRunner

        return OnnxRuntimeRunner(spec, folder / spec.file, threads, cache, settings.get("device", "cpu"))
    if backend == "torch":
        from omniseg_rt.engines.torch_backend import TorchRunner, pick_device

        return TorchRunner(spec, folder / "model.pth", precision, pick_device(settings.get("device")), threads)
    if backend == "tensorrt":
        from omniseg_rt.engines.tensorrt_backend import TensorRTRunner

        return TensorRTRunner(spec, folder, manifest)
    raise InvalidInputError(f"{folder}: unknown backend {backend!r} in the manifest; rebuild the engine")


def open_engine_unchecked(folder: Path, manifest: dict, threads: int | None = None) -> Engine:
    """Load every graph of ``manifest`` (already validated, or being built) from ``folder``."""
    runners: list[GraphRunner] = []
    try:
        for spec in graph_specs(manifest):
            runners.append(make_runner(folder, manifest, spec, threads))
    except BaseException:
        for runner in runners:
            runner.close()
        raise
    return Engine(folder, manifest, runners)


def open_engine(path: str | os.PathLike, threads: int | None = None) -> Engine:
    """Open an engine directory: validate its manifest and files, then load every graph.

    ``threads`` overrides the thread count recorded at build time (CPU backends).
    """
    folder = Path(path)
    manifest = read_engine_manifest(folder)
    if manifest["backend"] == "openvino" and manifest["precision"] == "bf16":
        from omniseg_rt.hardware import native_bf16

        if not native_bf16():
            raise InvalidInputError(
                f"{folder}: a bf16 engine, built on a CPU with native bf16, but this CPU has none; "
                f"rebuild here with: {rebuild_command(manifest, precision='fp32')}"
            )
    return open_engine_unchecked(folder, manifest, threads)
