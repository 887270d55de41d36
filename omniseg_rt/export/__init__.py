"""[torch, onnx] Export: the dynamic head fused into batched, class-conditioned ONNX graphs.

Public API: :func:`export_graphs`.
"""

from omniseg_rt.export.exporter import ExportedGraph, export_graphs, graph_sets

__all__ = ["ExportedGraph", "export_graphs", "graph_sets"]
