"""The fused, class-conditioned module that is exported to ONNX.

For a fixed set of T tissues it computes, for uint8 windows [B, 3, H, W]:

1. ``x = image / 255`` (normalisation inside the graph: runtimes feed raw 8-bit pixels);
2. the backbone once: head input [B, 8, H, W] and pooled feature [B, 256];
3. the controller as ONE constant affine map per tissue, pre-sliced for the T tissues (and, for
   the scale-aware family, each tissue's own scale): params [B, T, 153];
4. the heads of all (window, tissue) pairs as batched MatMuls over [B, T, 8, H*W].

The last head layer (8 -> 2) is folded into its difference (8 -> 1): the graph outputs the
foreground minus background logit [B, T, H, W], so a pixel is foreground where it is > 0. That
difference is linear in the controller's output, so it is folded into the controller weights:
per tissue 64 + 64 + 8 weights and 8 + 8 + 1 biases = 153 numbers instead of 162.

No grouped convolution, no loop, no data-dependent shape: the graph runs at any batch size.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from omniseg_rt.model.heads import task_affine
from omniseg_rt.model.network import OmniSeg

C = 8  # head channels
#: Layout of the 153 numbers per tissue in the fused graph: (name, count), in order.
FUSED_LAYOUT = (("w1", C * C), ("w2", C * C), ("dw3", C), ("b1", C), ("b2", C), ("db3", 1))
FUSED_PARAMS = sum(n for _, n in FUSED_LAYOUT)


def fused_controller(model: OmniSeg, task_ids: Sequence[int], scale_ids: Sequence[int]):
    """The controller reduced to the fused layout: (A [T, 153, 256], c [T, 153]) in float64."""
    conv = model.controller_conv
    a, c = task_affine(
        model.family,
        conv.weight.detach().double(),
        conv.bias.detach().double(),
        torch.tensor(list(task_ids)),
        torch.tensor(list(scale_ids)),
    )

    def fold(p: torch.Tensor) -> torch.Tensor:  # [..., 162] -> [..., 153]
        w1, w2, w3 = p[..., 0:64], p[..., 64:128], p[..., 128:144]
        b1, b2, b3 = p[..., 144:152], p[..., 152:160], p[..., 160:162]
        dw3 = w3[..., C:2 * C] - w3[..., 0:C]  # rows of w3: background 0, foreground 1
        db3 = b3[..., 1:2] - b3[..., 0:1]
        return torch.cat([w1, w2, dw3, b1, b2, db3], dim=-1)

    return fold(a.transpose(1, 2)).transpose(1, 2), fold(c)


class FusedGraph(nn.Module):
    """uint8 image [B, 3, H, W] -> float32 logits [B, T, H, W] (foreground minus background)."""

    def __init__(self, model: OmniSeg, task_ids: Sequence[int], scale_ids: Sequence[int]) -> None:
        super().__init__()
        # The exported graph has no memory format; keep the source model untouched.
        self.backbone = copy.deepcopy(model).to(memory_format=torch.contiguous_format).float().eval()
        a, c = fused_controller(model, task_ids, scale_ids)
        t = len(task_ids)
        self.num_tasks = t
        self.register_buffer("ctrl_weight", a.reshape(t * FUSED_PARAMS, -1).T.float().contiguous())
        self.register_buffer("ctrl_bias", c.reshape(t * FUSED_PARAMS).float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        t = self.num_tasks
        head_input, pooled = self.backbone.forward_features(image.to(torch.float32) / 255.0)
        params = (pooled @ self.ctrl_weight + self.ctrl_bias).reshape(-1, t, FUSED_PARAMS)
        w1, w2, dw3, b1, b2, db3 = torch.split(params, [n for _, n in FUSED_LAYOUT], dim=2)
        x = head_input.flatten(2).unsqueeze(1)  # [B, 1, 8, HW]
        x = torch.relu(w1.reshape(-1, t, C, C) @ x + b1.unsqueeze(-1))
        x = torch.relu(w2.reshape(-1, t, C, C) @ x + b2.unsqueeze(-1))
        x = dw3.unsqueeze(2) @ x + db3.unsqueeze(-1)  # [B, T, 1, HW]
        return x.reshape(head_input.shape[0], t, head_input.shape[2], head_input.shape[3])


def flops_per_window(module: FusedGraph, window: int) -> float:
    """Floating-point operations of one ``window`` x ``window`` pass (2 per multiply-add).

    Convolutions counted with hooks on a 64x64 pass and scaled by area (every conv output is
    exactly proportional to the input area); the heads add 2 * (64 + 64 + 8) per pixel and tissue.
    """
    total = 0

    def count(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        total += 2 * output.numel() * k

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    heads = 2 * (C * C + C * C + C) * module.num_tasks * window * window
    return total * (window / 64) ** 2 + heads
