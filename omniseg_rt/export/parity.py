"""Numerical parity of an exported graph with the PyTorch model, run by ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from omniseg_rt.graph_manifest import INPUT_NAME
from omniseg_rt.model.network import OmniSeg, margins

#: The export fails when max |ONNX - PyTorch| exceeds this fraction of the PyTorch logit range.
RELATIVE_TOLERANCE = 1e-4


def torch_margins(model: OmniSeg, images: np.ndarray, task_ids: list[int]) -> np.ndarray:
    """Foreground minus background logits from ``forward_tasks``: float32 [B, T, H, W]."""
    with torch.inference_mode():
        logits = model.forward_tasks(torch.from_numpy(images).float() / 255.0, task_ids)
    return margins(logits).numpy()


def onnx_margins(graph_bytes: bytes, images: np.ndarray, threads: int = 0) -> np.ndarray:
    """Run a graph once with ONNX Runtime on the CPU: uint8 [B, 3, H, W] -> float32 [B, T, H, W]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images})[0]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max |difference|, the reference's logit range, their ratio and the mask agreement."""
    if reference.shape != candidate.shape:
        return {"shape_reference": list(reference.shape), "shape_candidate": list(candidate.shape), "ok": False}
    diff = float(np.abs(reference - candidate).max())
    span = float(reference.max() - reference.min()) or 1.0
    agree = float(((reference > 0) == (candidate > 0)).mean())
    return {
        "max_abs_diff": diff,
        "logit_range": span,
        "relative": diff / span,
        "mask_agreement": agree,
        "ok": diff <= RELATIVE_TOLERANCE * span,
    }
