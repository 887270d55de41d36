"""Backend selection: which backends exist, which one ``auto`` means here, which precision."""

from __future__ import annotations

import importlib.util

from omniseg_rt.hardware import native_bf16, nvidia_gpus

BACKENDS = ("openvino", "onnxruntime", "tensorrt", "torch")
GPU_BACKENDS = ("tensorrt",)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def auto_backend() -> str:
    """TensorRT when it and an NVIDIA GPU are present, else OpenVINO, else ONNX Runtime."""
    if installed("tensorrt") and installed("pycuda") and nvidia_gpus():
        return "tensorrt"
    if installed("openvino"):
        return "openvino"
    return "onnxruntime"


def auto_precision(backend: str, device: str) -> str:
    """fp16 on GPUs, bf16 on CPUs that run it natively, else fp32."""
    if backend in GPU_BACKENDS or device in ("cuda", "tensorrt"):
        return "fp16"
    if backend in ("openvino", "torch") and native_bf16():
        return "bf16"
    return "fp32"
