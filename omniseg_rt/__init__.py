"""omniseg-rt: a deployable, optimised inference engine for the Omni-Seg kidney network.

Importing the package is cheap: torch, ONNX and the runtimes are imported only by the stages
that need them.
"""

__version__ = "0.2.0"


def segment(*args, **kwargs):
    """Segment whole slides: see :func:`omniseg_rt.runtime.segment` (imported on first use)."""
    from omniseg_rt.runtime import segment as run

    return run(*args, **kwargs)
