"""``bench_engine``: latency and throughput of an engine, against GEMM ceilings measured alongside.

The ceilings are what this machine's CPU reaches on one large matrix product through OpenVINO
(fp32, and bf16 where the CPU runs it natively), measured in the same run with the same threads,
so "achieved GFLOP/s" says how much of the machine the network uses.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from omniseg_rt.engines.base import Engine
from omniseg_rt.hardware import cpu_summary, default_threads, native_bf16
from omniseg_rt.graph_manifest import read_manifest


def gflop_per_window(engine: Engine, window: int) -> float | None:
    """The engine's work per window (all graphs), from the graph manifests, at ``window`` px."""
    total = 0.0
    for runner in engine.runners:
        meta = read_manifest(engine.path / runner.spec.file, verify_hash=False)
        if meta.gflop_per_window is None:
            return None
        total += meta.gflop_per_window * (window / meta.window) ** 2
    return total


def gemm_ceiling(precision: str, threads: int, size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a size^3 matrix product compiled by OpenVINO for the CPU at ``precision``."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], np.float32, name="a")
    b = ops.constant(rng.random((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "gemm")
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                      "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = rng.random((size, size), dtype=np.float32)
    request.infer({0: x})
    start = time.perf_counter()
    for _ in range(repeats):
        request.infer({0: x})
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def bench_engine(engine: Engine, batch: int = 4, window: int = 512, repeats: int = 5, warmup: int = 1,
                 windows: np.ndarray | None = None, ceilings: bool = True) -> dict:
    """Median latency of one batch through every graph of ``engine``; windows/s for all its tissues."""
    from omniseg_rt.data import sample_windows

    images = sample_windows(batch, window) if windows is None else windows
    for _ in range(warmup):
        engine.infer(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.infer(images)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "engine": str(engine.path), "backend": engine.backend, "precision": engine.precision,
        "tissues": list(engine.tissues), "graphs": len(engine.runners), "batch": batch, "window": window,
        "median_batch_seconds": median, "batch_seconds": times, "windows_per_second": batch / median,
        "cpu": cpu_summary(),
    }
    gflop = gflop_per_window(engine, window)
    if gflop is not None:
        result["gflop_per_window"] = gflop
        result["achieved_gflops"] = gflop * batch / median
    if ceilings and engine.manifest.device == "cpu":
        threads = engine.manifest.threads or default_threads()
        result["gemm_ceiling_gflops"] = {"fp32": gemm_ceiling("fp32", threads)}
        if native_bf16():
            result["gemm_ceiling_gflops"]["bf16"] = gemm_ceiling("bf16", threads)
        if "achieved_gflops" in result:
            result["fraction_of_ceiling"] = {
                k: result["achieved_gflops"] / v for k, v in result["gemm_ceiling_gflops"].items()
            }
    return result
