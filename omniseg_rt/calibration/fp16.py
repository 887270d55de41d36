"""FP16 graphs for strongly typed TensorRT engines (and ONNX Runtime on CUDA).

Tensors and weights become float16; the graph's input (uint8) and output (float32 margins) keep
their types, and numerically sensitive ops stay float32: the normalisation statistics
(InstanceNormalization, which carries GroupNorm), the global average pool feeding the controller,
and the dynamic heads' MatMuls. BF16 on CPUs needs no graph: it is OpenVINO's compile-time hint.
"""

from __future__ import annotations

from pathlib import Path

from omniseg_rt._optional import require
from omniseg_rt.fileutil import replacing

#: Op types kept in float32 in FP16 graphs (on top of ONNX Runtime's default block list).
FLOAT32_OPS = ("InstanceNormalization", "GlobalAveragePool", "ReduceMean", "MatMul", "Softmax")


def convert_fp16(graph: Path, out: Path) -> dict:
    """Write the FP16 version of ``graph`` (fp32 ONNX) to ``out``; returns what was kept float32."""
    onnx = require("onnx", "convert graphs to FP16")
    require("onnxruntime", "convert graphs to FP16")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(graph))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FLOAT32_OPS))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    with replacing(out) as tmp:
        onnx.save(converted, str(tmp))
    kinds = sorted({n.op_type for n in converted.graph.node})
    return {"float32_ops": list(FLOAT32_OPS), "io": "uint8 in, float32 out", "ops": kinds,
            "tool": "onnxruntime.transformers.float16"}
