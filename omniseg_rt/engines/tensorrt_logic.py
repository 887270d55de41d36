"""TensorRT decisions that need no TensorRT: version rules, flags, profiles, cache keys, compatibility.

Kept apart from ``tensorrt_backend.py`` so that they are tested on machines without TensorRT.
Facts (NVIDIA's TensorRT 10/11 release notes and Python API; the parser's operator list is cited
at :data:`TRT10_OPERATORS`): TensorRT 11 removed weak typing (the FP16/INT8 builder flags and
calibrators); precision comes from the graph (strongly typed: FP16 graphs, Q/DQ INT8 graphs). On 10.x the STRONGLY_TYPED network flag gives the same behaviour; Jetson Orin
on JetPack 6 ships 10.3. A plan is tied to the TensorRT version and the GPU architecture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass

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


#: ONNX operators the ONNX-TensorRT parser supports, with the element types of their (first)
#: input, from ONNX-TensorRT 10.1 GA, docs/operators.md (onnx/onnx-tensorrt, commit 96e7811;
#: opsets 9-20). Only operators an exported or converted graph of this project may hold are listed:
#: any other operator is reported, to be checked against the list before it is allowed.
_F, _I = ("FLOAT", "FLOAT16", "BFLOAT16"), ("INT32", "INT64")
TRT10_OPERATORS: dict[str, tuple[str, ...]] = {
    "Add": _F + _I, "Cast": _F + _I + ("UINT8", "BOOL"), "Clip": _F, "Concat": _F + _I + ("BOOL",),
    "Constant": _F + _I + ("BOOL",), "ConstantOfShape": _F + _I + ("BOOL",), "Conv": _F,
    "DequantizeLinear": ("INT8", "FLOAT8E4M3FN", "INT4"), "Div": _F + _I, "Equal": _F + _I, "Erf": _F,
    "Expand": _F + _I + ("BOOL",), "Flatten": _F + _I + ("BOOL",), "Gather": _F + _I + ("BOOL",), "Gemm": _F,
    "GlobalAveragePool": _F, "GroupNormalization": _F, "Identity": _F + _I + ("BOOL",),
    "InstanceNormalization": _F, "LeakyRelu": _F, "MatMul": _F, "MaxPool": _F, "Mul": _F + _I, "Neg": _F + _I,
    "Pad": _F + _I, "Pow": _F, "QuantizeLinear": _F, "Range": _F + _I, "ReduceMean": _F + _I,
    "ReduceSum": _F + _I, "Relu": _F + _I, "Reshape": _F + _I + ("BOOL",), "Resize": _F,
    "Shape": _F + _I + ("BOOL",), "Sigmoid": _F, "Slice": _F + _I + ("BOOL",), "Softmax": _F,
    "Split": _F + _I + ("BOOL",), "Sqrt": _F, "Squeeze": _F + _I + ("BOOL",), "Sub": _F + _I,
    "Tile": _F + _I + ("BOOL",), "Transpose": _F + _I + ("BOOL",), "Unsqueeze": _F + _I + ("BOOL",),
    "Where": _F + _I + ("BOOL",),
}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_CONSTANT_INPUTS = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceMean": 1, "ReduceSum": 1, "Pad": 3}


def parser_problems(model) -> list[str]:
    """What in ``model`` (an ``onnx.ModelProto``) the ONNX-TensorRT 10.x parser would refuse
    (empty: nothing): operators and input element types outside :data:`TRT10_OPERATORS`, opsets
    outside 9-20, Resize modes and antialiasing it lacks, axes that must be constants, quantization
    zero points that must be 0, and a uint8 tensor anywhere but the network input."""
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    inits = {i.name: i for i in graph.initializer}
    types.update({name: i.data_type for name, i in inits.items()})
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    name_of = onnx.TensorProto.DataType.Name
    problems = [f"opset {o.version} (TensorRT 10 parses opsets 9-20)" for o in model.opset_import
                if o.domain in ("", "ai.onnx") and not 9 <= o.version <= 20]
    network_inputs = {i.name for i in graph.input}
    for node in graph.node:
        where = f"{node.op_type} {node.name or node.output[0]}"
        if node.op_type not in TRT10_OPERATORS:
            problems.append(f"{where}: operator not in the ONNX-TensorRT 10 support list checked here")
            continue
        if node.input and node.input[0] in types:
            dtype = name_of(types[node.input[0]])
            if dtype not in TRT10_OPERATORS[node.op_type]:
                problems.append(f"{where}: input type {dtype} unsupported")
            if dtype == "UINT8" and node.input[0] not in network_inputs:
                problems.append(f"{where}: uint8 is supported only as a network input or output")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest").decode()
            coordinates = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in _RESIZE_MODES or coordinates not in _RESIZE_COORDINATES or attrs.get("antialias", 0):
                problems.append(f"{where}: mode {mode}, coordinates {coordinates}, antialias "
                                f"{attrs.get('antialias', 0)} unsupported")
        index = _CONSTANT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
            problems.append(f"{where}: axes must be a constant")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zero = inits.get(node.input[2])
            if zero is None or np.any(numpy_helper.to_array(zero) != 0):
                problems.append(f"{where}: the zero point must be a constant 0")
    return problems
