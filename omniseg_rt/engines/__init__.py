"""ONE Engine interface over OpenVINO, ONNX Runtime, TensorRT and PyTorch.

Public API: :func:`open_engine` (-> :class:`Engine`: ``tissues``, ``infer``, ``runner``,
``close``, context manager) and :func:`build_engine`. Backends are imported lazily, each in its
own module; only the torch backend imports torch.
"""

from omniseg_rt.engines.base import Engine, GraphRunner
from omniseg_rt.engines.loader import open_engine


def build_engine(*args, **kwargs):
    """See :func:`omniseg_rt.engines.build.build_engine`."""
    from omniseg_rt.engines.build import build_engine as _build

    return _build(*args, **kwargs)


__all__ = ["Engine", "GraphRunner", "build_engine", "open_engine"]
