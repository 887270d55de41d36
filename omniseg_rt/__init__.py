"""omniseg-rt: a deployable, optimised inference engine for the Omni-Seg kidney network.

Importing the package is cheap: torch, ONNX and the runtimes are imported only by the stages
that need them.
"""

__version__ = "0.1.0"
