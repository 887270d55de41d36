"""Import optional heavy packages with an error that names the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

from omniseg_rt.errors import MissingDependencyError

#: package to import -> the pip extra of omniseg-rt that provides it
_EXTRA_OF = {
    "torch": "train",
    "onnx": "",
    "onnxsim": "export",
    "onnxruntime": "",
    "openvino": "",
    "tensorrt": "tensorrt",
    "pycuda": "tensorrt",
    "ray": "ray",
    "nncf": "nncf",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying how to install it.

    ``purpose`` completes the sentence "... is needed to <purpose>".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_OF.get(top, "")
        target = f"'omniseg-rt[{extra}]'" if extra else "omniseg-rt"
        raise MissingDependencyError(
            f"the package '{top}' is needed to {purpose} but cannot be imported ({exc}); "
            f"install it with: pip install {target}"
        ) from exc
