"""TensorRT on NVIDIA GPUs (TensorRT 10.3+ and 11.x, Python API) with pycuda for memory and streams.

NOT EXECUTED on the development machines (no TensorRT, no GPU there): written against the
TensorRT 10/11 Python API documentation; the decisions it takes (flags per version, profile
shapes, cache keys, compatibility) live in ``tensorrt_logic.py`` and are tested without TensorRT.

Build: parse the ONNX graph (every parser error reported), strongly typed network where the
version and graph allow, an optimisation profile for batch (min/opt/max) at the window size,
a workspace limit, a persistent timing cache per GPU model and TensorRT version (a corrupt or
foreign one is replaced, updates are merged under a lock and written atomically), and an engine
cache keyed by graph hash + precision + GPU + compute capability + TensorRT version + profile,
all under ``$OMNISEG_RT_CACHE/tensorrt`` (default ``~/.cache/omniseg-rt/tensorrt``).

Run: per runner two slots, each with its own execution context, CUDA stream, page-locked host
buffers and device buffers sized for the profile's max batch; ``submit`` copies batch k+1 in on
one stream while batch k computes on the other; ``execute_async_v3`` with tensor addresses set
once per slot (the buffers never move). No CUDA graphs: pycuda has no graph-capture API.
The deserialised engine's I/O tensors are checked (one uint8 ``image`` input, one float32
``logits`` output) and every boolean TensorRT returns is checked. The CUDA context is pushed
around each launch and collect and popped on every path, so a runner works from any thread and an
error never leaves a context pushed (pycuda aborts at exit when one is).
"""

from __future__ import annotations

import logging
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.engines.base import GraphSpec, InFlightRunner
from omniseg_rt.hardware import nvidia_gpus
from omniseg_rt.engines.manifest import rebuild_command
from omniseg_rt.engines.tensorrt_logic import (
    build_plan,
    cache_key,
    compatibility_problems,
    profile_shapes,
)
from omniseg_rt.errors import InvalidInputError, MissingDependencyError
from omniseg_rt.fileutil import cache_dir, replacing
from omniseg_rt.graph_manifest import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import BuildRequest
    from omniseg_rt.engines.manifest import EngineManifest

log = logging.getLogger(__name__)

NAME = "tensorrt"
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_PRECISIONS = frozenset({"int8", "fp16"})  # strongly typed: precision comes from the graph
SLOTS = 2
_LOGGER = None  # one trt.Logger per process (TensorRT warns when several are created)


def _trt():
    return require("tensorrt", "build and run TensorRT engines")


def _logger(trt):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _cuda():
    require("pycuda", "run TensorRT engines")
    import pycuda.driver as cuda

    cuda.init()
    return cuda


def cache_root() -> Path:
    """Plans and timing caches: ``$OMNISEG_RT_CACHE/tensorrt`` (default ``~/.cache/omniseg-rt/tensorrt``)."""
    return cache_dir() / "tensorrt"


def check_available() -> None:
    _trt()
    _cuda()
    if not nvidia_gpus():
        raise MissingDependencyError("TensorRT needs an NVIDIA GPU, and nvidia-smi reports none that CUDA may use "
                                     "here (check CUDA_VISIBLE_DEVICES)")


def versions() -> dict[str, str]:
    return {"tensorrt": _trt().__version__}


def resolve_device(requested: str) -> str:
    if requested not in ("auto", "cuda"):
        raise InvalidInputError(f"TensorRT engines run on an NVIDIA GPU (cuda), not {requested}")
    return "cuda"


def check_request(request: BuildRequest) -> None:
    if request.precision not in PRECISIONS:
        raise InvalidInputError(f"TensorRT engines are {', '.join(PRECISIONS)}, not {request.precision}")
    if request.precision == "int8" and request.int8_tool == "nncf":
        raise InvalidInputError("NNCF quantizes some activations as unsigned int8, which TensorRT does not take; "
                                "use --int8-tool onnxruntime (the default) for TensorRT engines")
    check_available()


def prepare_graphs(graphs: list[Path], request: BuildRequest, notify) -> None:
    """TensorRT parses the exported (FP16 or Q/DQ INT8) graphs as they are."""


def finish_build(staging: Path, manifest: EngineManifest, request: BuildRequest, notify) -> None:
    build_plans(staging, manifest, request.settings, notify)


def check_can_open(folder: Path, manifest: EngineManifest) -> None:
    """GPU, TensorRT version and plan compatibility are checked by the runner, which has them."""


def make_runner(folder: Path, manifest: EngineManifest, spec: GraphSpec, threads: int) -> TensorRTRunner:
    return TensorRTRunner(spec, folder, manifest)


def _gpu() -> dict:
    gpu = nvidia_gpus()[0]
    return {"gpu": gpu["name"], "compute_capability": gpu["compute_capability"]}


def timing_cache_path(gpu: dict, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version (two GPU models of one compute
    capability would otherwise overwrite each other's timings and report a mismatch)."""
    model = re.sub(r"[^A-Za-z0-9]+", "-", gpu["gpu"]).strip("-")
    return cache_root() / f"timing-{model}-cc{gpu['compute_capability']}-trt{trt_version}.cache"


def attach_timing_cache(config, path: Path):
    """Create the builder's timing cache from ``path`` (an empty one when the file is missing,
    corrupt or from another TensorRT/GPU: with a warning) and set it on ``config``; returns it."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if data:
        log.warning("%s: not a timing cache this TensorRT and GPU can use; starting an empty one "
                    "(this build tunes from scratch)", path)
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
    raise InvalidInputError("TensorRT could not create or set a timing cache for this build")


def save_timing_cache(config, path: Path) -> None:
    """Merge the builder's timings into ``path`` under a lock (a concurrent build may have written it
    meanwhile) and write it atomically. A failure costs only tuning time later: warned, not raised."""
    import filelock

    updated = config.get_timing_cache()
    if updated is None:
        log.warning("TensorRT returned no timing cache after the build; %s not updated", path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock"):
        if path.is_file():
            theirs = config.create_timing_cache(path.read_bytes())
            if theirs is None or not updated.combine(theirs, False):
                log.warning("%s: could not merge the timing cache on disk; replacing it", path)
        with replacing(path) as tmp:
            tmp.write_bytes(bytes(updated.serialize()))


def _build_one(onnx_path: Path, plan_path: Path, precision: str, settings, timing_cache: Path) -> None:
    trt = _trt()
    plan_spec = build_plan(trt.__version__, precision, have_fp16_graph=precision == "fp16")  # build converts
    logger = _logger(trt)
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
    if config.add_optimization_profile(profile) < 0:
        raise InvalidInputError(f"{onnx_path}: TensorRT rejected the optimisation profile {shapes}")
    attach_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InvalidInputError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    with replacing(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
    save_timing_cache(config, timing_cache)


def build_plans(staging: Path, manifest, settings, notify) -> None:
    """Build (or take from the engine cache) one plan per graph; records them in ``manifest``
    (each graph's ``plan`` and ``cache_key``, and the ``tensorrt`` section)."""
    from omniseg_rt.fileutil import sha256_file

    trt = _trt()
    gpu = _gpu()
    profile = {"batch": [settings.batch_min, settings.batch_opt, settings.batch_max], "window": settings.window,
               "workspace_mb": settings.workspace_mb}
    (staging / "plans").mkdir(exist_ok=True)
    timing_cache = timing_cache_path(gpu, trt.__version__)
    for graph in manifest.graphs:
        onnx_path = staging / graph.file
        key = cache_key(sha256_file(onnx_path), manifest.precision, gpu["gpu"], gpu["compute_capability"],
                        trt.__version__, profile)
        cached = cache_root() / f"{key}.plan"
        plan_path = staging / "plans" / f"{graph.name}.plan"
        if cached.is_file():
            notify(f"TensorRT plan for {graph.name} from the engine cache")
        else:
            notify(f"building the TensorRT plan for {graph.name} ({manifest.precision})")
            cached.parent.mkdir(parents=True, exist_ok=True)
            _build_one(onnx_path, cached, manifest.precision, settings, timing_cache)
        shutil.copy2(cached, plan_path)
        graph.plan, graph.cache_key = f"plans/{plan_path.name}", key
    manifest.tensorrt = {"version": trt.__version__, **gpu, "profile": profile}


def io_problems(trt, engine) -> list[str]:
    """Why a deserialised engine does not have omniseg-rt's I/O (empty: it does): exactly one
    uint8 input ``image`` and one float32 output ``logits``."""
    expected = {INPUT_NAME: (trt.TensorIOMode.INPUT, trt.DataType.UINT8),
                OUTPUT_NAME: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT)}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    problems = [] if sorted(names) == sorted(expected) else [f"I/O tensors {names}, expected {sorted(expected)}"]
    for name in set(names) & set(expected):
        mode, dtype = engine.get_tensor_mode(name), engine.get_tensor_dtype(name)
        if (mode, dtype) != expected[name]:
            problems.append(f"{name} is {mode} {dtype}, expected {expected[name][0]} {expected[name][1]}")
    return problems


class _Slot:
    """One in-flight batch: execution context, stream, page-locked and device buffers."""

    def __init__(self, engine, cuda, max_batch: int, window: int, tasks: int) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise InvalidInputError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.Stream()
        self.host_in = cuda.pagelocked_empty((max_batch, 3, window, window), np.uint8)
        self.host_out = cuda.pagelocked_empty((max_batch, tasks, window, window), np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        for name, buffer in ((INPUT_NAME, self.dev_in), (OUTPUT_NAME, self.dev_out)):
            if not self.context.set_tensor_address(name, int(buffer)):
                self.free()
                raise InvalidInputError(f"TensorRT refused the device address of {name}")
        self.done = cuda.Event()
        self.batch = 0
        self.shape: tuple[int, ...] = ()

    def set_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self.shape:
            if not self.context.set_input_shape(INPUT_NAME, shape):
                raise InvalidInputError(f"TensorRT refused the input shape {shape} (outside the engine's profile)")
            self.shape = shape

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def free(self) -> None:
        for buffer in (self.dev_in, self.dev_out):
            buffer.free()
        self.context = None


class TensorRTRunner(InFlightRunner):
    """``trt``, ``cuda`` and ``gpus`` default to the tensorrt module, pycuda.driver and this
    machine's GPUs; tests pass stand-ins to check the logic where TensorRT is absent."""

    def __init__(self, spec: GraphSpec, folder: Path, manifest, trt=None, cuda=None, gpus=None) -> None:
        trt, cuda = trt or _trt(), cuda or _cuda()
        built = manifest.tensorrt or {}
        gpus = nvidia_gpus() if gpus is None else gpus
        if not gpus:
            raise MissingDependencyError(f"{folder}: a TensorRT engine needs an NVIDIA GPU; none found "
                                         "(check CUDA_VISIBLE_DEVICES)")
        problems = compatibility_problems(built, gpus[0]["name"], gpus[0]["compute_capability"], trt.__version__)
        if problems:
            raise InvalidInputError(f"{folder}: this TensorRT engine cannot run here: {'; '.join(problems)}; "
                                    f"rebuild it on this machine with: {rebuild_command(manifest)}")
        self.spec, self.cuda = spec, cuda
        self.engine, self.slots = None, []
        self.cuda_context = cuda.Device(0).retain_primary_context()
        try:
            with self._current():
                try:
                    self._load(trt, folder, manifest, built)
                except BaseException:
                    self._release()
                    raise
        except BaseException:
            self.cuda_context.detach()
            raise
        self._init_slots(self.slots)

    def _load(self, trt, folder: Path, manifest, built: dict) -> None:
        plan = manifest.graph(self.spec.name).plan
        if plan is None:
            raise InvalidInputError(f"{folder}: the manifest names no TensorRT plan for {self.spec.name}; "
                                    f"rebuild with: {rebuild_command(manifest)}")
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine((folder / plan).read_bytes())
        if self.engine is None:
            raise InvalidInputError(f"{folder}: TensorRT could not deserialise {plan}; "
                                    f"rebuild with: {rebuild_command(manifest)}")
        problems = io_problems(trt, self.engine)
        if problems:
            raise InvalidInputError(f"{folder / plan}: not an omniseg-rt engine: {'; '.join(problems)}; "
                                    f"rebuild with: {rebuild_command(manifest)}")
        self.max_batch = built["profile"]["batch"][2]
        self.window = built["profile"]["window"]
        for _ in range(SLOTS):
            self.slots.append(_Slot(self.engine, self.cuda, self.max_batch, self.window, len(self.spec.tissues)))

    @contextmanager
    def _current(self):
        """This runner's CUDA context, current on the calling thread for the block, popped after it
        whatever happens."""
        self.cuda_context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def _launch(self, slot: _Slot, images: np.ndarray) -> None:
        if len(images) > self.max_batch or images.shape[2:] != (self.window, self.window):
            raise InvalidInputError(f"this TensorRT engine takes up to {self.max_batch} windows of "
                                    f"{self.window}x{self.window}, got {images.shape}")
        n, cuda = len(images), self.cuda
        with self._current():
            slot.batch = n
            slot.host_in[:n] = images
            cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:n], slot.stream)
            slot.set_shape(images.shape)
            slot.execute()
            cuda.memcpy_dtoh_async(slot.host_out[:n], slot.dev_out, slot.stream)
            slot.done.record(slot.stream)

    def _collect(self, slot: _Slot) -> np.ndarray:
        with self._current():
            slot.done.synchronize()
            return np.array(slot.host_out[:slot.batch])

    def _release(self) -> None:
        """Free the slots' device memory and the engine (the context must be current)."""
        for slot in self.slots:
            slot.free()
        self.slots, self.engine = [], None

    def close(self) -> None:
        if self.engine is None:
            return
        super().close()
        with self._current():
            self._release()
        self.cuda_context.detach()
