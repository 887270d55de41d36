"""OpenVINO on the CPU: the default engine where there is no NVIDIA GPU.

The exported ONNX graph is compiled for the CPU with the engine's precision as a compile-time
hint (fp32, or bf16 where the CPU runs it natively; int8 comes from Q/DQ graphs), the THROUGHPUT
performance hint, an explicit thread count and a model cache in the engine directory. Each runner
keeps two infer requests so that two batches are in flight; a single ``infer`` call splits its
batch over them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.base import GraphSpec, InFlightRunner
from omniseg_rt.hardware import native_bf16
from omniseg_rt.errors import InvalidInputError

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import BuildRequest
    from omniseg_rt.engines.manifest import EngineManifest

log = logging.getLogger(__name__)

NAME = "openvino"
PRECISIONS = ("fp32", "bf16", "int8")
GRAPH_PRECISIONS = frozenset({"int8"})
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 runs from the graph's Q/DQ nodes
IN_FLIGHT = 2


def _ov():
    return require("openvino", "run OpenVINO engines")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"the openvino backend runs {', '.join(PRECISIONS)}, not {precision}; "
                                "fp16 is for GPUs (--backend tensorrt or torch)")
    if precision == "bf16" and not native_bf16():
        raise InvalidInputError(
            "this CPU has no native bf16 (AMX or AVX-512 BF16), so bf16 would be emulated and slow; "
            "use --precision fp32 (or auto, which picks fp32 here)"
        )


def compile_config(precision: str, threads: int, cache_dir: Path) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": _HINT[precision],
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": IN_FLIGHT,
        "INFERENCE_NUM_THREADS": threads,
        "CACHE_DIR": str(cache_dir),
    }


def versions() -> dict[str, str]:
    return {"openvino": _ov().get_version()}


def resolve_device(requested: str) -> str:
    if requested not in ("auto", "cpu"):
        raise InvalidInputError(f"the openvino backend runs on the CPU, not {requested}")
    return "cpu"


def check_request(request: BuildRequest) -> None:
    _ov()
    check_precision(request.precision)


def prepare_graphs(graphs: list[Path], request: BuildRequest, notify) -> None:
    """The OpenVINO form of each graph (``graph_rewrites``: same function, no layout reorders),
    recorded in its sidecar under ``rewrites``."""
    if not request.graph_rewrites:
        return
    from omniseg_rt.engines.graph_rewrites import rewrite_for_openvino
    from omniseg_rt.graph_manifest import read_manifest, write_manifest

    for graph in graphs:
        meta = read_manifest(graph)
        notify(f"rewriting {meta.name} for OpenVINO")
        meta.rewrites = rewrite_for_openvino(graph)
        write_manifest(graph, meta)


def finish_build(staging: Path, manifest: EngineManifest, request: BuildRequest, notify) -> None:
    """Nothing to add: OpenVINO compiles when the engine is first opened (into its cache)."""


def check_can_open(folder: Path, manifest: EngineManifest) -> None:
    if manifest.precision == "bf16" and not native_bf16():
        from omniseg_rt.engines.manifest import rebuild_command

        raise InvalidInputError(
            f"{folder}: a bf16 engine, built on a CPU with native bf16, but this CPU has none; "
            f"rebuild here with: {rebuild_command(manifest, precision='fp32')}"
        )


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> OpenVINORunner:
    return OpenVINORunner(spec, folder / spec.file, manifest.precision, threads, folder / "cache")


class OpenVINORunner(InFlightRunner):
    def __init__(self, spec: GraphSpec, graph: Path, precision: str, threads: int, cache_dir: Path) -> None:
        ov = _ov()
        check_precision(precision)
        self.spec = spec
        self.compiled = ov.Core().compile_model(str(graph), "CPU", compile_config(precision, threads, cache_dir))
        self._init_slots([self.compiled.create_infer_request() for _ in range(IN_FLIGHT)])
        log.debug("compiled %s for CPU (%s, %d threads)", graph, precision, threads)

    def _launch(self, request, images: np.ndarray) -> None:
        request.start_async({0: images})

    def _collect(self, request) -> np.ndarray:
        request.wait()
        return request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        super().close()
        self.compiled = None
