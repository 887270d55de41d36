"""Controller slicing and the dynamic heads, run for many tissues at once.

The controller turns the pooled feature f [256] of a window into the 162 parameters of a small
per-window, per-tissue head (three 1x1 convolutions 8 -> 8 -> 8 -> 2). Because the task (and
scale) enter the controller as one-hot vectors, the controller reduces to one affine map per
tissue:

- MIDL: ``params = W[:, :256] f + (b + W[:, 256 + t])``
- scale-aware: ``params = W[:, (4 t + s)::24] f + b``

``task_affine`` pre-slices those maps for the requested tissues only, and ``run_heads`` evaluates
all (window, tissue) heads as batched matrix products over [N, T, 8, H*W]: no grouped
convolution, no loop over the batch, any batch size.
"""

from __future__ import annotations

import torch

from omniseg_rt.tissues import NUM_SCALES, NUM_TASKS

#: Layout of the 162 generated numbers: (name, count), in order.
PARAM_LAYOUT = (("w1", 64), ("w2", 64), ("w3", 16), ("b1", 8), ("b2", 8), ("b3", 2))
NUM_PARAMS = sum(n for _, n in PARAM_LAYOUT)


def task_affine(
    family: str, weight: torch.Tensor, bias: torch.Tensor, tasks: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-slice the controller for the requested tissues.

    Args:
        family: ``"midl"`` or ``"scale"``.
        weight: controller weight [162, 262, 1, 1] (midl) or [162, 6144, 1, 1] (scale).
        bias: controller bias [162].
        tasks, scales: int64 [T] task ids and scale ids.

    Returns:
        (A [T, 162, 256], c [T, 162]) such that ``params[n, t] = A[t] @ f[n] + c[t]``.
    """
    w = weight.flatten(1)
    if family == "midl":
        a = w[:, :-NUM_TASKS].unsqueeze(0).expand(len(tasks), -1, -1)
        c = bias.unsqueeze(0) + w[:, w.shape[1] - NUM_TASKS + tasks].transpose(0, 1)
        return a, c
    # flattened index of (feature i, task t, scale s) is 24 i + 4 t + s
    per_pair = w.view(w.shape[0], -1, NUM_TASKS, NUM_SCALES)
    a = per_pair[:, :, tasks, scales].permute(2, 0, 1)
    return a, bias.unsqueeze(0).expand(len(tasks), -1)


def head_params(pooled: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """pooled [N, 256], A [T, 162, 256], c [T, 162] -> params [N, T, 162]."""
    t, p, k = a.shape
    return (pooled @ a.reshape(t * p, k).transpose(0, 1)).view(-1, t, p) + c


def run_heads(head_input: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Evaluate every (window, tissue) head.

    Args:
        head_input: [N, 8, H, W] from the backbone.
        params: [N, T, 162] from :func:`head_params`.

    Returns:
        logits [N, T, 2, H, W] (channel 0 background, 1 foreground).
    """
    n, ch, h, w = head_input.shape
    t = params.shape[1]
    w1, w2, w3, b1, b2, b3 = torch.split(params, [size for _, size in PARAM_LAYOUT], dim=2)
    x = head_input.reshape(n, 1, ch, h * w)
    x = torch.relu(w1.reshape(n, t, ch, ch) @ x + b1.unsqueeze(-1))
    x = torch.relu(w2.reshape(n, t, ch, ch) @ x + b2.unsqueeze(-1))
    x = w3.reshape(n, t, 2, ch) @ x + b3.unsqueeze(-1)
    return x.view(n, t, 2, h, w)
