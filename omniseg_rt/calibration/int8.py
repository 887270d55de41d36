"""INT8: symmetric Q/DQ graphs from a calibration set, and TensorRT 10's calibration cache.

Symmetric INT8 (zero point 0) with per-channel weight scales is what TensorRT's explicit
quantization consumes; OpenVINO and ONNX Runtime run the same graph. Two quantizers make it:
ONNX Runtime's ``quantize_static`` (QDQ format; the default) and OpenVINO's NNCF
(``nncf.quantize``, performance preset = symmetric; it quantizes non-negative activations as
*unsigned* int8, which OpenVINO and ONNX Runtime run but TensorRT does not accept). Only the backbone's convolutions are
quantized: the controller and the dynamic heads (MatMul) stay float, and so do the first and
last convolution unless asked otherwise -- the layers whose rounding costs Dice (DEVELOPERS.md).
"""

from __future__ import annotations

import logging
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt._optional import require
from omniseg_rt.errors import InvalidInputError
from omniseg_rt.graph_manifest import INPUT_NAME
from omniseg_rt.fileutil import atomic_write_text, replacing

log = logging.getLogger(__name__)
METHODS = ("minmax", "entropy", "percentile")
TOOLS = ("onnxruntime", "nncf")
KEEP_FLOAT = ("first", "last")  # default: first and last Conv stay float (heads always do)


def quantize_int8(graph: Path, windows: np.ndarray, out: Path, method: str = "minmax",
                  keep_float: tuple[str, ...] = KEEP_FLOAT, batch: int = 4, tool: str = "onnxruntime") -> dict[str, Any]:
    """Write the Q/DQ INT8 version of ``graph`` (fp32 ONNX) to ``out``, calibrated on ``windows``
    (uint8 [N, 3, H, W] real tissue) with ``tool``. Returns what was done (tool, method,
    excluded nodes, counts). ``method`` applies to ONNX Runtime (NNCF uses its own min/max)."""
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

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: windows[i:i + batch]} for i in range(0, len(windows), batch)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference + ORT's graph optimisation (folds the float16-stored weights' Casts, so the
        # quantizer sees Conv weights as initializers and scales them per channel)
        quant_pre_process(str(graph), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if n.op_type == "Conv"]
        exclude = ([convs[0]] if "first" in keep_float else []) + ([convs[-1]] if "last" in keep_float else [])
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
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                )
    if tool == "nncf":
        model = onnx.load(str(out))
        count = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
        return {"tool": "nncf quantize (performance preset: symmetric; uint8 after ReLU)", "method": "nncf min/max",
                "symmetric": True, "per_channel_weights": True, "quantized_ops": "NNCF's choice, MatMul ignored",
                "kept_float": {"nodes": exclude, "ops": ["MatMul (controller, dynamic heads)"]},
                "quantize_linear_nodes": count, "calibration_windows": len(windows)}
    model = onnx.load(str(out))
    count = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    log.info("quantized %s: %d Q/DQ pairs, %d convolutions kept float", graph.name, count, len(exclude))
    return {"method": method, "symmetric": True, "per_channel_weights": True, "quantized_ops": ["Conv"],
            "kept_float": {"nodes": exclude, "ops": ["MatMul (controller, dynamic heads)"]},
            "quantize_linear_nodes": count, "calibration_windows": len(windows), "tool": "onnxruntime quantize_static"}


def _nncf_quantize(pre: Path, windows: np.ndarray, out: Path, exclude: list[str], batch: int) -> None:
    nncf = require("nncf", "quantize graphs to INT8 with NNCF")
    import onnx

    batches = [windows[i:i + batch] for i in range(0, len(windows), batch)]
    quantized = nncf.quantize(
        onnx.load(str(pre)), nncf.Dataset(batches, lambda x: {INPUT_NAME: x}),
        preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(windows),
        ignored_scope=nncf.IgnoredScope(names=exclude, types=["MatMul"], validate=False))
    onnx.save(quantized, str(out))


def write_trt_calibration_cache(qdq_graph: Path, path: Path, trt_version: str = "100300") -> int:
    """TensorRT 10.x implicit-calibration cache of the activation scales in ``qdq_graph``.

    One ``tensor: <big-endian float32 scale in hex>`` line per activation quantized in the graph
    (names as in the graph without its Q/DQ nodes), after the header TensorRT writes itself.
    For users who build the float graph with ``BuilderFlag.INT8`` and a calibrator that reads a
    cache; the Q/DQ graph itself needs none. Returns the number of tensors.
    """
    onnx = require("onnx", "write a TensorRT calibration cache")
    from onnx import numpy_helper

    model = onnx.load(str(qdq_graph))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    lines = [f"TRT-{trt_version}-EntropyCalibration2"]
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            scale = float(np.asarray(inits[node.input[1]]).reshape(-1)[0])
            lines.append(f"{node.input[0]}: {struct.pack('>f', scale).hex()}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(lines) - 1
