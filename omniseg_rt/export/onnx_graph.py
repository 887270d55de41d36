"""Turn a :class:`FusedGraph` into a checked, simplified ONNX model.

After onnxsim, an exported graph (opset 17) contains exactly these operator types, all of which
the TensorRT 10.x/11.x ONNX parser and OpenVINO support:

- Cast, Div: uint8 -> float32 / 255 at the input;
- Conv: group 1, constant weights (initializers) only;
- InstanceNormalization + Reshape + Mul + Add: GroupNorm (opset 17 has no GroupNormalization);
- Relu, Add, Resize (nearest, x2): the residual blocks and decoder;
- GlobalAveragePool, Flatten: the pooled feature for the controller;
- MatMul, Add: the pre-sliced controller and the batched dynamic heads;
- Shape, Gather, Concat, Reshape, Unsqueeze, Split, Slice, Constant: shape plumbing for the
  dynamic batch and window size.

No Loop, If, Scan, NonZero, Einsum or grouped Conv (``check_graph`` enforces the allow-list).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from omniseg_rt.export.wrapper import FusedGraph
from omniseg_rt.graph_manifest import INPUT_NAME, OUTPUT_NAME
from omniseg_rt.fileutil import replacing

log = logging.getLogger(__name__)

#: The op types an exported graph may contain (see the module docstring).
ALLOWED_OPS = frozenset({
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Expand", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "InstanceNormalization", "MatMul", "Mul", "Range",
    "ReduceMean", "Relu", "Reshape", "Resize", "Shape", "Slice", "Split", "Squeeze", "Sub",
    "Unsqueeze", "Identity",
})


def to_onnx(module: FusedGraph, window: int, opset: int) -> onnx.ModelProto:
    """Trace ``module`` with a [1, 3, window, window] uint8 example; batch and size stay dynamic."""
    example = torch.zeros(1, 3, window, window, dtype=torch.uint8)
    buffer = io.BytesIO()
    dims = {0: "batch", 2: "height", 3: "width"}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """onnxsim, or the graph as it was (with a warning) when onnxsim fails on it."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model, check_n=0)
        if ok:
            return simplified, True
        log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
    except Exception as exc:  # onnxsim raises assorted errors on graphs it does not handle
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", exc)
    return model, False


def op_types(model: onnx.ModelProto) -> list[str]:
    return sorted({node.op_type for node in model.graph.node})


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker plus our own rules: allowed ops only, no grouped Conv, no dynamic Conv weights."""
    onnx.checker.check_model(model, full_check=True)
    initializers = {init.name for init in model.graph.initializer}
    constants = {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    constants |= {node.output[0] for node in model.graph.node  # float16-stored weights (store_exact_fp16)
                  if node.op_type == "Cast" and node.input[0] in initializers}
    for node in model.graph.node:
        if node.op_type not in ALLOWED_OPS:
            raise AssertionError(f"exported graph contains the unexpected op {node.op_type} ({node.name})")
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group != 1:
                raise AssertionError(f"exported graph contains a grouped Conv ({node.name}, group {group})")
            if node.input[1] not in initializers | constants:
                raise AssertionError(f"exported graph contains a Conv with non-constant weights ({node.name})")


def store_exact_fp16(model: onnx.ModelProto, min_size: int = 1024) -> int:
    """Store float32 weights that float16 holds exactly (e.g. from a float16 checkpoint, like the
    bundled demo model) as float16 + a Cast back to float32: half the file, the same numbers.

    Weights with any value float16 cannot represent exactly stay float32, so this never changes
    a result. Returns the number of weights converted (``model`` is changed in place).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph, casts, converted = model.graph, [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_size or not np.array_equal(values.astype(np.float16).astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"))
        converted += 1
    for node in reversed(casts):
        graph.node.insert(0, node)
    return converted


def save(model: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> None:
    """Embed ``metadata`` as metadata_props and write ``path`` atomically."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "omniseg-rt"
    with replacing(path) as tmp:
        onnx.save(model, tmp)
