"""The backends: which exist (each one module implementing ``backend.Backend``), which one
``auto`` means here, which precision. Adding a backend is one module and one line here."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.hardware import native_bf16, nvidia_gpus

if TYPE_CHECKING:
    from omniseg_rt.engines.backend import Backend

#: name -> module implementing the Backend hooks
MODULES = {
    "openvino": "omniseg_rt.engines.openvino_backend",
    "onnxruntime": "omniseg_rt.engines.onnxruntime_backend",
    "tensorrt": "omniseg_rt.engines.tensorrt_backend",
    "torch": "omniseg_rt.engines.torch_backend",
}
BACKENDS = tuple(MODULES)
GPU_BACKENDS = ("tensorrt",)


def backend(name: str) -> Backend:
    """The module of backend ``name`` (its runtime package is imported only when a hook runs)."""
    if name not in MODULES:
        raise InvalidInputError(f"unknown backend {name!r}: choose one of {', '.join(MODULES)}; "
                                "an engine naming another one was built by another omniseg-rt: rebuild it")
    return importlib.import_module(MODULES[name])


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def auto_backend() -> str:
    """TensorRT when it and an NVIDIA GPU are present; else torch where it sees that GPU (CUDA);
    else OpenVINO, else ONNX Runtime (CPUs)."""
    gpus = nvidia_gpus()
    if gpus and installed("tensorrt") and installed("pycuda"):
        return "tensorrt"
    if gpus and installed("torch") and _torch_sees_cuda():
        return "torch"
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


def _torch_sees_cuda() -> bool:
    """Whether PyTorch here is a CUDA build that sees a GPU (imports torch: only asked on GPU machines)."""
    import torch

    return bool(torch.cuda.is_available())
