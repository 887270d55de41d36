"""INT8: symmetric Q/DQ graphs from a calibration set.

Symmetric INT8 (zero point 0) with per-channel weight scales is what TensorRT's explicit
quantization consumes; OpenVINO and ONNX Runtime run the same graph. Two quantizers make it:
ONNX Runtime's ``quantize_static`` (QDQ format; the default) and OpenVINO's NNCF
(``nncf.quantize``, performance preset = symmetric; it quantizes non-negative activations as
*unsigned* int8, which OpenVINO and ONNX Runtime run but TensorRT does not accept). Only the backbone's convolutions are
quantized: the controller and the dynamic heads (MatMul) stay float, and so do, unless asked
otherwise, the first and last convolution and the full-, half- and (decoder) quarter-resolution
blocks (the stem's ``layer0`` and ``layer1``, the decoder's ``x4_resb``/``x2_resb``/``x1_resb``) -- the layers whose rounding
costs Dice (DEVELOPERS.md, "INT8": measured per block on the bundled model).
Activation ranges default to the 99.999th percentile of |activation| (ONNX Runtime's
``Percentile`` method): plain min/max lets rare outliers stretch the scale and cost the sparse
tissues several points of Dice. Calibration is collected one batch at a time
(``CalibStridedMinMax``), so memory is one batch's activations whatever the number of windows.
Biases stay float (``QuantizeBias`` off): ONNX Runtime would otherwise store a biased
convolution's bias as int32 behind a DequantizeLinear, which TensorRT's dequantize layer rejects
(it takes int8, fp8 and int4 inputs only). TensorRT builds these graphs in explicit-quantization
mode, so no calibration cache is written: nothing would read it (calibrators are deprecated in
TensorRT 10.1 and removed in 11).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.errors import InvalidInputError
from omniseg_rt.graph_manifest import INPUT_NAME
from omniseg_rt.fileutil import replacing

log = logging.getLogger(__name__)
METHODS = ("percentile", "minmax", "entropy")
DEFAULT_METHOD = "percentile"
TOOLS = ("onnxruntime", "nncf")
#: convolutions that stay float by default (the heads always do): "first", "last", node-name prefixes
KEEP_FLOAT = ("first", "last", "/layer0/", "/layer1/", "/x4_resb/", "/x2_resb/", "/x1_resb/")


def quantize_int8(graph: Path, windows: np.ndarray, out: Path, method: str = DEFAULT_METHOD,
                  keep_float: tuple[str, ...] | None = None, batch: int = 4, tool: str = "onnxruntime") -> dict[str, Any]:
    """Write the Q/DQ INT8 version of ``graph`` (fp32 ONNX) to ``out``, calibrated on ``windows``
    (uint8 [N, 3, H, W] real tissue) with ``tool``. Returns what was done (tool, method,
    excluded nodes, counts). ``method`` applies to ONNX Runtime (NNCF uses its own min/max).
    ``keep_float``: convolutions to leave float ("first", "last", node-name prefixes; each must
    match); default :data:`KEEP_FLOAT`, whose prefixes apply where the graph has them."""
    if tool not in TOOLS:
        raise InvalidInputError(f"int8 tool {tool!r}: choose {', '.join(TOOLS)}")
    require("onnxruntime", "quantize graphs to INT8")
    onnx = require("onnx", "quantize graphs to INT8")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    if method not in METHODS:
        raise InvalidInputError(f"calibration method {method!r}: choose {', '.join(METHODS)}")
    if windows.dtype != np.uint8 or windows.ndim != 4 or len(windows) == 0:
        raise InvalidInputError(f"calibration windows must be uint8 [N, 3, H, W] (N > 0), got {windows.dtype} {windows.shape}")

    # equal batches: ONNX Runtime's entropy and percentile calibrators stack the batches' outputs
    # and fail on a shorter last one ("inhomogeneous shape")
    batch = max(d for d in range(1, min(batch, len(windows)) + 1) if len(windows) % d == 0)

    class Reader(CalibrationDataReader):
        """The batches; ``set_range`` lets the quantizer collect them a chunk at a time."""

        def __init__(self) -> None:
            self.batches = [{INPUT_NAME: windows[i:i + batch]} for i in range(0, len(windows), batch)]
            self.set_range(0, len(self.batches))

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(self.batches[start_index:end_index])

        def get_next(self):
            return next(self.pending, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference + ORT's graph optimisation (folds the float16-stored weights' Casts, so the
        # quantizer sees Conv weights as initializers and scales them per channel)
        quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if n.op_type == "Conv"]
        exclude = _kept_float(convs, KEEP_FLOAT if keep_float is None else keep_float, strict=keep_float is not None)
        with replacing(out) as tmp_out:
            if tool == "nncf":
                _nncf_quantize(pre, windows, tmp_out, exclude, batch)
            else:
                quantize_static(
                    str(pre), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "CalibStridedMinMax": 1},  # one batch at a time (any method, despite the name)
                )
    if tool == "nncf":
        model = onnx.load(str(out))
        count = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
        return {"tool": "nncf quantize (performance preset: symmetric; uint8 after ReLU)", "method": "nncf min/max",
                "symmetric": True, "per_channel_weights": True, "quantized_ops": "NNCF's choice, MatMul ignored",
                "kept_float": {"nodes": exclude, "ops": ["MatMul (controller, dynamic heads)"]},
                "quantize_linear_nodes": count, "calibration_windows": len(windows)}
    model = onnx.load(str(out))
    problems = tensorrt_qdq_problems(model)
    if problems:
        out.unlink()
        raise InvalidInputError(f"{graph}: the INT8 graph would not build in TensorRT: {'; '.join(problems)}")
    count = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    log.info("quantized %s: %d Q/DQ pairs, %d convolutions kept float", graph.name, count, len(exclude))
    return {"method": method, "symmetric": True, "per_channel_weights": True, "quantized_ops": ["Conv"],
            "kept_float": {"nodes": exclude, "ops": ["MatMul (controller, dynamic heads)"]},
            "quantize_linear_nodes": count, "calibration_windows": len(windows), "tool": "onnxruntime quantize_static"}


def _kept_float(convs: list[str], keep_float: tuple[str, ...], strict: bool) -> list[str]:
    """Names of the convolutions that stay float: "first", "last", or node-name prefixes (with
    ``strict``, a prefix matching no convolution is an error)."""
    kept = []
    for key in keep_float:
        found = [convs[0]] if key == "first" else [convs[-1]] if key == "last" else [c for c in convs if c.startswith(key)]
        if not found and strict:
            raise InvalidInputError(f"keep-float {key!r} names no convolution of the graph: use first, last or the "
                                    f"start of a Conv node's name (e.g. {convs[0]!r})")
        kept += [c for c in found if c not in kept]
    return kept


def _nncf_quantize(pre: Path, windows: np.ndarray, out: Path, exclude: list[str], batch: int) -> None:
    nncf = require("nncf", "quantize graphs to INT8 with NNCF")
    import onnx

    batches = [windows[i:i + batch] for i in range(0, len(windows), batch)]
    quantized = nncf.quantize(
        onnx.load(str(pre)), nncf.Dataset(batches, lambda x: {INPUT_NAME: x}),
        preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(windows),
        ignored_scope=nncf.IgnoredScope(names=exclude, types=["MatMul"], validate=False))
    onnx.save(quantized, str(out))


def tensorrt_qdq_problems(model) -> list[str]:
    """Why TensorRT's explicit quantization would reject the Q/DQ graph ``model`` (an
    ``onnx.ModelProto``; empty: nothing found): a DequantizeLinear fed by anything but int8 (an
    int32 bias), a convolution bias that is not a float initializer, or a use of the uint8 ``image``
    input other than a Cast to float (TensorRT takes uint8 only as a network input, and the Cast
    keeps it out of the quantized part)."""
    from onnx import TensorProto

    graph = model.graph
    dtypes = {i.name: i.data_type for i in graph.initializer}
    problems = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and dtypes.get(node.input[0], TensorProto.INT8) != TensorProto.INT8:
            problems.append(f"DequantizeLinear {node.name} dequantizes {TensorProto.DataType.Name(dtypes[node.input[0]])}")
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            if dtypes.get(node.input[2]) not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                problems.append(f"Conv {node.name} has a bias that is not a float initializer ({node.input[2]})")
    users = [n for n in graph.node if INPUT_NAME in n.input]
    if not users or any(n.op_type != "Cast" for n in users):
        problems.append(f"the uint8 {INPUT_NAME} input feeds {[n.op_type for n in users]}, not only a Cast to float")
    return problems
