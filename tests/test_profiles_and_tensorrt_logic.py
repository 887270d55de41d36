"""Pure logic that needs neither TensorRT nor a GPU: profiles, backend choice, TensorRT rules."""

from __future__ import annotations

import importlib.util

import pytest

from omniseg_rt.engines import registry
from omniseg_rt.engines.profiles import SHIPPED, load_profile, parse_profile
from omniseg_rt.engines.tensorrt_logic import (
    ShapeGraphs,
    build_plan,
    cache_key,
    compatibility_problems,
    parse_version,
    profile_shapes,
)
from omniseg_rt.errors import InvalidInputError, MissingFileError


def test_shipped_profiles_are_valid():
    names = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert names == ["cpu", "cpu-int8", "gpu-fp16", "gpu-int8", "jetson-orin-fp16", "jetson-orin-int8"]
    for name in names:
        profile = load_profile(name)
        assert profile.name == name and profile.window == 512
    orin = load_profile("jetson-orin-fp16")
    assert (orin.backend, orin.precision, orin.batch_max, orin.workspace_mb) == ("tensorrt", "fp16", 4, 1024)
    assert load_profile(SHIPPED / "cpu.toml").backend == "openvino"
    assert orin.cuda_graphs and not load_profile("gpu-fp16").cuda_graphs


@pytest.mark.parametrize("text, words", [
    ('backend = "openvino"\nthreds = 2\n', "unknown settings ['threds']"),
    ('precision = "fp8"\n', "precision 'fp8'"),
    ('[batch]\nmin = 4\nopt = 2\nmax = 8\n', "batch range"),
    ("window = 500\n", "window 500"),
    ("backend = \n", "not valid TOML"),
    ('cuda_graphs = "yes"\n', "cuda_graphs 'yes'"),
])
def test_bad_profiles(text, words):
    with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(text, "x", "x.toml")


def test_missing_profile():
    with pytest.raises(MissingFileError, match="cpu-int8"):
        load_profile("gpu-fp64")


def test_auto_precision():
    assert registry.auto_precision("tensorrt", "cuda") == "fp16"
    assert registry.auto_precision("onnxruntime", "cuda") == "fp16"
    assert registry.auto_precision("onnxruntime", "cpu") == "fp32"
    expected = "bf16" if registry.native_bf16() else "fp32"
    assert registry.auto_precision("openvino", "cpu") == expected


def test_build_plan_per_tensorrt_version():
    assert parse_version("10.3.0.26") == (10, 3, 0) and parse_version("11.4") == (11, 4, 0)
    weak = build_plan("10.3.0", "fp16", have_fp16_graph=False)
    assert weak.builder_flags == ("FP16",) and not weak.strongly_typed and weak.graph_precision == "fp32"
    typed = build_plan("10.8.0", "fp16", have_fp16_graph=True)
    assert typed.strongly_typed and typed.builder_flags == () and typed.graph_precision == "fp16"
    with pytest.raises(InvalidInputError, match="FP16 graph is needed"):
        build_plan("11.0.0", "fp16", have_fp16_graph=False)
    for version in ("10.3.0", "11.2.0"):
        plan = build_plan(version, "int8", have_fp16_graph=False)
        assert plan.strongly_typed and plan.graph_precision == "int8" and plan.builder_flags == ()
    assert build_plan("11.1.0", "fp32", False).strongly_typed
    assert not build_plan("10.3.0", "fp32", False).strongly_typed
    with pytest.raises(InvalidInputError, match="too old"):
        build_plan("8.6.1", "fp32", False)


def test_profile_shapes_and_cache_key():
    shapes = profile_shapes(1, 4, 8, 512)
    assert shapes == {"min": (1, 3, 512, 512), "opt": (4, 3, 512, 512), "max": (8, 3, 512, 512)}
    base = dict(graph_sha256="a" * 64, precision="fp16", gpu_name="NVIDIA H100", compute_capability="9.0",
                trt_version="10.3.0", profile={"batch": [1, 4, 8], "window": 512})
    key = cache_key(**base)
    assert cache_key(**base) == key
    for field, value in [("graph_sha256", "b" * 64), ("precision", "int8"), ("gpu_name", "Orin"),
                         ("compute_capability", "8.7"), ("trt_version", "11.0.0"),
                         ("profile", {"batch": [1, 4, 16], "window": 512})]:
        assert cache_key(**{**base, field: value}) != key, field


def test_compatibility_problems():
    built = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    assert compatibility_problems(built, "Orin", "8.7", "10.3.0") == []
    problems = compatibility_problems(built, "NVIDIA H100 80GB HBM3", "9.0", "11.0.0")
    assert len(problems) == 2 and "TensorRT 10.3.0" in problems[0] and "8.7" in problems[1]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed here (its wheels download from NVIDIA's host)")
def test_tensorrt_backend_imports():
    from omniseg_rt.engines import tensorrt_backend

    assert "tensorrt" in tensorrt_backend.versions()


class _Recorder:
    """Plain callables standing in for enqueue / capture / replay, recording what ShapeGraphs asked."""

    def __init__(self, fail_capture: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_capture = fail_capture

    def execute(self) -> None:
        self.calls.append("execute")

    def capture(self):
        self.calls.append("capture")
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        return f"graph{len(self.calls)}"

    def replay(self, graph) -> None:
        self.calls.append(f"replay {graph}")


def test_cuda_graph_per_batch_size():
    graphs, rec = ShapeGraphs(enabled=True), _Recorder()
    outcomes = [graphs.enqueue(n, rec.execute, rec.capture, rec.replay) for n in (8, 8, 3, 8, 3)]
    # each size: one normal enqueue (TensorRT's required run after a shape change), a capture, then replays
    assert outcomes == ["captured", "replayed", "captured", "replayed", "replayed"]
    assert rec.calls == ["execute", "capture", "replay graph2", "execute", "capture", "replay graph2",
                         "replay graph5"]
    assert sorted(graphs.graphs) == [3, 8]


def test_cuda_graph_capture_failure_falls_back(caplog):
    graphs, rec = ShapeGraphs(enabled=True), _Recorder(fail_capture=True)
    outcomes = [graphs.enqueue(n, rec.execute, rec.capture, rec.replay) for n in (4, 4, 2)]
    assert outcomes == ["executed", "executed", "executed"]
    assert rec.calls == ["execute", "capture", "execute", "execute"]  # one try, then never again
    assert "running without CUDA graphs" in caplog.text and not graphs.enabled
    off, rec = ShapeGraphs(enabled=False), _Recorder()
    assert [off.enqueue(4, rec.execute, rec.capture, rec.replay) for _ in range(2)] == ["executed"] * 2
    assert rec.calls == ["execute", "execute"]


def test_rebuild_command_keeps_every_choice():
    from omniseg_rt.engines.manifest import rebuild_command

    manifest = {"rebuild": {"source": "m.pth", "backend": "tensorrt", "precision": "int8", "tissues": None,
                            "profile": "jetson-orin-int8", "out": "engines/orin", "calibration": "calibration/lab",
                            "cuda_graphs": True, "graph_rewrites": True}}
    assert rebuild_command(manifest) == ("omniseg-rt build m.pth --backend tensorrt --precision int8 "
                                         "--profile jetson-orin-int8 --calibration calibration/lab "
                                         "--out engines/orin --cuda-graphs")
    manifest["rebuild"].update(backend="openvino", cuda_graphs=False, graph_rewrites=False, calibration=None,
                               profile=None)
    assert rebuild_command(manifest, precision="fp32") == ("omniseg-rt build m.pth --backend openvino "
                                                           "--precision fp32 --out engines/orin --no-graph-rewrites")
