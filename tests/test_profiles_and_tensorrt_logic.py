"""Pure logic that needs neither TensorRT nor a GPU: profiles, backend choice, TensorRT rules."""

from __future__ import annotations

import importlib.util

import pytest

from omniseg_rt.engines import registry
from omniseg_rt.engines.profiles import SHIPPED, load_profile, parse_profile
from omniseg_rt.engines.tensorrt_logic import (
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


@pytest.mark.parametrize("text, words", [
    ('backend = "openvino"\nthreds = 2\n', "unknown settings ['threds']"),
    ('precision = "fp8"\n', "precision 'fp8'"),
    ('[batch]\nmin = 4\nopt = 2\nmax = 8\n', "batch range"),
    ("window = 500\n", "window 500"),
    ("backend = \n", "not valid TOML"),
    ("cuda_graphs = true\n", "pycuda, which the TensorRT runtime uses, has no graph-capture API"),
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


def test_rebuild_command_and_arguments_keep_every_choice():
    from omniseg_rt.engines.manifest import rebuild_args, rebuild_command

    manifest = {"rebuild": {"source": "m.pth", "backend": "tensorrt", "precision": "int8", "tissues": None,
                            "profile": "jetson-orin-int8", "out": "engines/orin", "calibration": "calibration/lab",
                            "window": 512, "device": "auto", "calibration_method": "entropy",
                            "int8_tool": "onnxruntime", "min_dice": 0.95, "graph_rewrites": True}}
    assert rebuild_command(manifest) == ("omniseg-rt build m.pth --backend tensorrt --precision int8 "
                                         "--profile jetson-orin-int8 --calibration calibration/lab --window 512 "
                                         "--calibration-method entropy --min-dice 0.95 --out engines/orin")
    assert rebuild_args(manifest, out="here") == {
        "model": "m.pth", "backend": "tensorrt", "precision": "int8", "profile": "jetson-orin-int8",
        "calibration": "calibration/lab", "window": 512, "device": "auto", "calibration_method": "entropy",
        "int8_tool": "onnxruntime", "min_dice": 0.95, "out": "here"}
    manifest["rebuild"].update(backend="openvino", graph_rewrites=False, calibration=None, profile=None,
                               calibration_method="percentile", min_dice=0.97)
    assert rebuild_command(manifest, precision="fp32") == ("omniseg-rt build m.pth --backend openvino "
                                                           "--precision fp32 --window 512 --out engines/orin "
                                                           "--no-graph-rewrites")
    assert rebuild_args(manifest)["graph_rewrites"] is False


def test_exported_graphs_use_only_what_the_tensorrt_10_parser_supports(tmp_path):
    """Static check against ONNX-TensorRT 10.1 GA's docs/operators.md (TensorRT itself is absent):
    the bundled all-tissue graph, its FP16 conversion (what TensorRT fp16 engines parse) and a
    scale-group graph; the int8 Q/DQ graphs are checked in test_calibration.py."""
    import onnx

    from omniseg_rt.calibration.fp16 import convert_fp16
    from omniseg_rt.data import DEMO_GRAPH
    from omniseg_rt.engines.tensorrt_logic import parser_problems

    assert parser_problems(onnx.load(str(DEMO_GRAPH))) == []
    convert_fp16(DEMO_GRAPH, tmp_path / "fp16.onnx")
    fp16 = onnx.load(str(tmp_path / "fp16.onnx"))
    assert parser_problems(fp16) == [] and any(n.op_type == "Cast" for n in fp16.graph.node)
    # and it does see what the parser refuses
    broken = onnx.load(str(DEMO_GRAPH))
    resize = next(n for n in broken.graph.node if n.op_type == "Resize")
    resize.attribute.append(onnx.helper.make_attribute("antialias", 1))
    broken.graph.node.append(onnx.helper.make_node("NonZero", [broken.graph.output[0].name], ["nz"], name="nz"))
    problems = parser_problems(broken)
    assert any("antialias 1" in p for p in problems) and any("NonZero nz: operator not in" in p for p in problems)


def test_every_registered_backend_implements_the_backend_hooks():
    """One module per backend, named once in the registry; importing it imports no runtime."""
    import subprocess
    import sys

    from omniseg_rt.engines.backend import Backend

    hooks = [n for n in dir(Backend) if not n.startswith("_")] + list(Backend.__annotations__)
    for name in registry.BACKENDS:
        module = registry.backend(name)
        missing = [h for h in hooks if not hasattr(module, h)]
        assert not missing, (name, missing)
        assert module.NAME == name and module.GRAPH_PRECISIONS <= set(module.PRECISIONS)
    with pytest.raises(InvalidInputError, match="unknown backend 'tvm'"):
        registry.backend("tvm")
    code = ("import sys; from omniseg_rt.engines import registry\n"
            "[registry.backend(n) for n in registry.BACKENDS]\n"
            "print([m for m in ('torch', 'openvino', 'onnxruntime', 'tensorrt') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
