"""TensorRT decisions that need no TensorRT: version rules, flags, profiles, cache keys, compatibility.

Kept apart from ``tensorrt_backend.py`` so that they are tested on machines without TensorRT.
Facts (``docs/tensorrt-and-deployment.md``): TensorRT 11 removed weak typing (the FP16/INT8
builder flags and calibrators); precision comes from the graph (strongly typed: FP16 graphs,
Q/DQ INT8 graphs). On 10.x the STRONGLY_TYPED network flag gives the same behaviour; Jetson Orin
on JetPack 6 ships 10.3. A plan is tied to the TensorRT version and the GPU architecture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from omniseg_rt.errors import InvalidInputError

MIN_VERSION = (10, 3)

log = logging.getLogger(__name__)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> (10, 3, 0)."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise InvalidInputError(f"cannot read a TensorRT version from {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder for one graph."""

    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag to set (weakly typed 10.x only)
    graph_precision: str  # which graph to parse: "fp32", "fp16" or "int8" (Q/DQ)


def build_plan(version: str, precision: str, have_fp16_graph: bool) -> BuildPlan:
    """Builder settings for ``precision`` on TensorRT ``version``.

    - fp32: the fp32 graph, no flags (strongly typed on 11.x, where it is the only mode).
    - fp16: the FP16 graph, strongly typed; on 10.x without an FP16 graph, the fp32 graph with
      the (deprecated) FP16 builder flag; on 11.x an FP16 graph is required.
    - int8: the Q/DQ graph, strongly typed (explicit quantization; no calibrator).
    """
    major, minor, _ = parse_version(version)
    if (major, minor) < MIN_VERSION:
        raise InvalidInputError(f"TensorRT {version} is too old: omniseg-rt needs {MIN_VERSION[0]}.{MIN_VERSION[1]}+")
    weak_flags_exist = major < 11
    if precision == "fp32":
        return BuildPlan(strongly_typed=not weak_flags_exist, builder_flags=(), graph_precision="fp32")
    if precision == "fp16":
        if have_fp16_graph:
            return BuildPlan(strongly_typed=True, builder_flags=(), graph_precision="fp16")
        if weak_flags_exist:
            return BuildPlan(strongly_typed=False, builder_flags=("FP16",), graph_precision="fp32")
        raise InvalidInputError(
            f"TensorRT {version} has no FP16 builder flag (strongly typed only): an FP16 graph is needed"
        )
    if precision == "int8":
        return BuildPlan(strongly_typed=True, builder_flags=(), graph_precision="int8")
    raise InvalidInputError(f"TensorRT engines are fp32, fp16 or int8, not {precision}")


def profile_shapes(batch_min: int, batch_opt: int, batch_max: int, window: int) -> dict[str, tuple[int, ...]]:
    """min/opt/max shapes of the ``image`` input: dynamic batch, the profile's square window."""
    return {k: (b, 3, window, window) for k, b in (("min", batch_min), ("opt", batch_opt), ("max", batch_max))}


def cache_key(graph_sha256: str, precision: str, gpu_name: str, compute_capability: str,
              trt_version: str, profile: dict) -> str:
    """The engine-cache key: everything a plan depends on. Any change -> another plan."""
    material = {"graph": graph_sha256, "precision": precision, "gpu": gpu_name, "cc": compute_capability,
                "tensorrt": trt_version, "profile": profile}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def compatibility_problems(built: dict, gpu_name: str, compute_capability: str, trt_version: str) -> list[str]:
    """Why a plan built as ``built`` (manifest's tensorrt section) cannot run here (empty: it can)."""
    problems = []
    if built.get("version") != trt_version:
        problems.append(f"built with TensorRT {built.get('version')}, this machine has {trt_version}")
    if built.get("compute_capability") != compute_capability:
        problems.append(
            f"built for compute capability {built.get('compute_capability')} ({built.get('gpu')}), "
            f"this GPU is {compute_capability} ({gpu_name})"
        )
    elif built.get("gpu") != gpu_name:
        problems.append(f"built on {built.get('gpu')}, this GPU is {gpu_name} (same architecture: may work, "
                        "but TensorRT tunes tactics per GPU model)")
    return problems


class ShapeGraphs:
    """CUDA graphs of one execution context, one per batch size actually used.

    The first batch of a size runs normally (the enqueue TensorRT needs after a shape change before
    a capture) and then its graph is captured; later batches of that size replay it. A capture that
    fails (a graph TensorRT cannot capture, an old driver) turns graphs off for this context, with
    one warning, and every batch runs normally from then on: nothing is lost but launch overhead.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.graphs: dict[int, Any] = {}

    def enqueue(self, batch: int, execute: Callable[[], None], capture: Callable[[], Any],
                replay: Callable[[Any], None]) -> str:
        """Enqueue one batch of ``batch`` windows; returns "replayed", "captured" or "executed"."""
        graph = self.graphs.get(batch)
        if graph is not None:
            replay(graph)
            return "replayed"
        execute()
        if not self.enabled:
            return "executed"
        try:
            self.graphs[batch] = capture()
        except Exception as exc:  # noqa: BLE001 -- any capture failure: run without graphs
            log.warning("CUDA graph capture failed for batch %d (%s); running without CUDA graphs", batch, exc)
            self.enabled = False
            self.graphs.clear()
            return "executed"
        return "captured"
