"""TensorRT on NVIDIA GPUs (TensorRT 10.3+ and 11.x, Python API) with pycuda for memory and streams.

NOT EXECUTED on the development machines (no TensorRT, no GPU there): written against the
TensorRT 10/11 Python API documentation; the decisions it takes (flags per version, profile
shapes, cache keys, compatibility) live in ``tensorrt_logic.py`` and are tested without TensorRT.

Build: parse the ONNX graph (every parser error reported), strongly typed network where the
version and graph allow, an optimisation profile for batch (min/opt/max) at the window size,
a workspace limit, a persistent timing cache, and an engine cache keyed by graph hash +
precision + GPU + compute capability + TensorRT version + profile.

Run: per runner two slots, each with its own execution context, CUDA stream, page-locked host
buffers and device buffers sized for the profile's max batch; ``submit`` copies batch k+1 in on
one stream while batch k computes on the other; ``execute_async_v3`` with tensor addresses set
once per slot (the buffers never move). With ``cuda_graphs`` in the profile, each slot captures a
CUDA graph per batch size it meets (full batches and the last, partial one) and replays it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.base import GraphSpec, InFlightRunner
from omniseg_rt.engines.hardware import nvidia_gpus
from omniseg_rt.engines.manifest import rebuild_command
from omniseg_rt.engines.tensorrt_logic import (
    ShapeGraphs,
    build_plan,
    cache_key,
    compatibility_problems,
    profile_shapes,
)
from omniseg_rt.errors import InvalidInputError, MissingDependencyError
from omniseg_rt.graph_manifest import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

NAME = "tensorrt"
SLOTS = 2
CACHE_ROOT = Path.home() / ".cache" / "omniseg-rt" / "tensorrt"


def _trt():
    return require("tensorrt", "build and run TensorRT engines")


def _cuda():
    require("pycuda", "run TensorRT engines")
    import pycuda.driver as cuda

    cuda.init()
    return cuda


def check_available() -> None:
    _trt()
    _cuda()
    if not nvidia_gpus():
        raise MissingDependencyError("TensorRT needs an NVIDIA GPU, and nvidia-smi reports none on this machine")


def versions() -> dict[str, str]:
    return {"tensorrt": _trt().__version__}


def _gpu() -> dict:
    gpu = nvidia_gpus()[0]
    return {"gpu": gpu["name"], "compute_capability": gpu["compute_capability"]}


def _build_one(onnx_path: Path, plan_path: Path, precision: str, settings, timing_cache: Path) -> None:
    trt = _trt()
    plan_spec = build_plan(trt.__version__, precision, have_fp16_graph=precision == "fp16")  # build converts
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan_spec.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InvalidInputError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    if settings.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    for flag in plan_spec.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(settings.batch_min, settings.batch_opt, settings.batch_max, settings.window)
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InvalidInputError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.write_bytes(bytes(plan))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_plans(staging: Path, manifest: dict, settings, notify) -> dict[str, Any]:
    """Build (or take from the engine cache) one plan per graph; returns manifest additions."""
    from omniseg_rt.fileutil import sha256_file

    trt = _trt()
    gpu = _gpu()
    profile = {"batch": [settings.batch_min, settings.batch_opt, settings.batch_max], "window": settings.window,
               "workspace_mb": settings.workspace_mb}
    (staging / "plans").mkdir(exist_ok=True)
    timing_cache = CACHE_ROOT / f"timing-{gpu['compute_capability']}-{trt.__version__}.cache"
    for graph in manifest["graphs"]:
        onnx_path = staging / graph["file"]
        key = cache_key(sha256_file(onnx_path), manifest["precision"], gpu["gpu"], gpu["compute_capability"],
                        trt.__version__, profile)
        cached = CACHE_ROOT / f"{key}.plan"
        plan_path = staging / "plans" / f"{graph['name']}.plan"
        if cached.is_file():
            notify(f"TensorRT plan for {graph['name']} from the engine cache")
        else:
            notify(f"building the TensorRT plan for {graph['name']} ({manifest['precision']})")
            CACHE_ROOT.mkdir(parents=True, exist_ok=True)
            _build_one(onnx_path, cached, manifest["precision"], settings, timing_cache)
        shutil.copy2(cached, plan_path)
        graph["plan"] = f"plans/{plan_path.name}"
        graph["cache_key"] = key
    return {"tensorrt": {"version": trt.__version__, **gpu, "profile": profile, "cuda_graphs": settings.cuda_graphs}}


class _Slot:
    """One in-flight batch: execution context, stream, page-locked and device buffers, CUDA graphs."""

    def __init__(self, engine, cuda, max_batch: int, window: int, tasks: int, cuda_graphs: bool) -> None:
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        self.host_in = cuda.pagelocked_empty((max_batch, 3, window, window), np.uint8)
        self.host_out = cuda.pagelocked_empty((max_batch, tasks, window, window), np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.context.set_tensor_address(INPUT_NAME, int(self.dev_in))
        self.context.set_tensor_address(OUTPUT_NAME, int(self.dev_out))
        self.graphs = ShapeGraphs(cuda_graphs)
        self.done = cuda.Event()
        self.batch = 0
        self.shape: tuple[int, ...] = ()

    def set_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self.shape:
            self.context.set_input_shape(INPUT_NAME, shape)
            self.shape = shape

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def capture(self):
        """A CUDA graph of one enqueue at the current shape (TensorRT has just run it once)."""
        self.stream.begin_capture()
        try:
            self.execute()
        finally:
            graph = self.stream.end_capture()
        return graph.instantiate()


class TensorRTRunner(InFlightRunner):
    def __init__(self, spec: GraphSpec, folder: Path, manifest: dict) -> None:
        trt, cuda = _trt(), _cuda()
        built = manifest.get("tensorrt", {})
        gpus = nvidia_gpus()
        if not gpus:
            raise MissingDependencyError(f"{folder}: a TensorRT engine needs an NVIDIA GPU; none found")
        problems = compatibility_problems(built, gpus[0]["name"], gpus[0]["compute_capability"], trt.__version__)
        if problems:
            raise InvalidInputError(f"{folder}: this TensorRT engine cannot run here: {'; '.join(problems)}; "
                                    f"rebuild it on this machine with: {rebuild_command(manifest)}")
        self.spec, self.cuda = spec, cuda
        self.cuda_context = cuda.Device(0).retain_primary_context()
        self.cuda_context.push()
        entry = next(g for g in manifest["graphs"] if g["name"] == spec.name)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine((folder / entry["plan"]).read_bytes())
        if self.engine is None:
            raise InvalidInputError(f"{folder}: TensorRT could not deserialise {entry['plan']}; "
                                    f"rebuild with: {rebuild_command(manifest)}")
        self.max_batch = built["profile"]["batch"][2]
        self.window = built["profile"]["window"]
        cuda_graphs = bool(built.get("cuda_graphs", False))
        self._init_slots([_Slot(self.engine, cuda, self.max_batch, self.window, len(spec.tissues), cuda_graphs)
                          for _ in range(SLOTS)])

    def _launch(self, slot: _Slot, images: np.ndarray) -> None:
        if len(images) > self.max_batch or images.shape[2:] != (self.window, self.window):
            raise InvalidInputError(f"this TensorRT engine takes up to {self.max_batch} windows of "
                                    f"{self.window}x{self.window}, got {images.shape}")
        n, cuda = len(images), self.cuda
        slot.batch = n
        slot.host_in[:n] = images
        cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:n], slot.stream)
        slot.set_shape(images.shape)
        slot.graphs.enqueue(n, slot.execute, slot.capture, lambda graph: graph.launch(slot.stream))
        cuda.memcpy_dtoh_async(slot.host_out[:n], slot.dev_out, slot.stream)
        slot.done.record(slot.stream)

    def _collect(self, slot: _Slot) -> np.ndarray:
        slot.done.synchronize()
        return np.array(slot.host_out[:slot.batch])

    def close(self) -> None:
        super().close()
        self.engine = None
        self.cuda_context.pop()
