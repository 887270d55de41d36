"""ONNX Runtime: CPU with tuned session options and an optimised-model cache; CUDA or TensorRT
execution providers when the installed onnxruntime has them and the user asks for them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.base import GraphRunner, GraphSpec, check_images
from omniseg_rt.errors import InvalidInputError, MissingDependencyError
from omniseg_rt.graph_manifest import INPUT_NAME

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import BuildRequest
    from omniseg_rt.engines.manifest import EngineManifest

log = logging.getLogger(__name__)

NAME = "onnxruntime"
PRECISIONS = ("fp32", "int8", "fp16")
GRAPH_PRECISIONS = frozenset({"int8", "fp16"})
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort():
    return require("onnxruntime", "run ONNX Runtime engines")


def versions() -> dict[str, str]:
    return {"onnxruntime": _ort().__version__}


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device`` (cpu, cuda, tensorrt), checked against the install."""
    if device not in PROVIDERS:
        raise InvalidInputError(f"unknown onnxruntime device {device!r}; choose one of {', '.join(PROVIDERS)}")
    available = _ort().get_available_providers()
    wanted = PROVIDERS[device]
    if wanted not in available:
        raise MissingDependencyError(
            f"onnxruntime execution provider {wanted} was requested but this onnxruntime has only "
            f"{', '.join(available)}; install onnxruntime-gpu (pip install onnxruntime-gpu) on a machine with CUDA"
        )
    chain = [wanted] + (["CUDAExecutionProvider"] if device == "tensorrt" else [])
    return list(dict.fromkeys(chain + ["CPUExecutionProvider"]))


def check_precision(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"the onnxruntime backend runs {', '.join(PRECISIONS)}, not {precision}")
    if precision == "fp16" and device == "cpu":
        raise InvalidInputError("fp16 graphs are for GPUs; on the CPU use fp32 or int8 (or --backend openvino)")


def resolve_device(requested: str) -> str:
    return "cpu" if requested == "auto" else requested


def check_request(request: BuildRequest) -> None:
    providers_for(request.device)
    check_precision(request.precision, request.device)


def prepare_graphs(graphs: list[Path], request: BuildRequest, notify) -> None:
    """ONNX Runtime runs the exported graphs as they are (its InstanceNormalization kernel is fused)."""


def finish_build(staging: Path, manifest: EngineManifest, request: BuildRequest, notify) -> None:
    """Nothing to add: the optimised model is cached when the engine is first opened."""


def check_can_open(folder: Path, manifest: EngineManifest) -> None:
    """Nothing beyond the providers, which the runner checks."""


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(spec, folder / spec.file, threads, folder / "cache", manifest.device)


def session_options(threads: int, optimized_path: Path | None):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


class OnnxRuntimeRunner(GraphRunner):
    def __init__(self, spec: GraphSpec, graph: Path, threads: int, cache_dir: Path | None,
                 device: str = "cpu") -> None:
        """``cache_dir``: where the CPU-optimised model is cached (None: no cache)."""
        ort = _ort()
        self.spec = spec
        providers = providers_for(device)
        cached = cache_dir / f"{graph.stem}.ort-optimized.onnx" if cache_dir is not None else None
        # The optimised model is CPU-specific; use it only for CPU sessions, write it once.
        if device == "cpu" and cached is not None and cached.is_file():
            source, out = cached, None
        else:
            source, out = graph, (cached if device == "cpu" else None)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        self.session = ort.InferenceSession(str(source), session_options(threads, out), providers=providers)
        log.debug("onnxruntime session for %s on %s", source, self.session.get_providers())

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: check_images(images)})[0]

    def close(self) -> None:
        self.session = None
