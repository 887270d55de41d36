"""The Omni-Seg network (both checkpoint families) with fused multi-tissue heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.model.backbone import POOLED_CHANNELS, SIZE_MULTIPLE, UNetBackbone
from omniseg_rt.model.heads import NUM_PARAMS, head_params, run_heads, task_affine
from omniseg_rt.tissues import NUM_SCALES, NUM_TASKS, TISSUES

MIDL = "midl"
SCALE = "scale"
FAMILIES = {
    MIDL: "MIDL 2022 (controller on [pooled features, task one-hot], 262 -> 162)",
    SCALE: "scale-aware (controller on pooled features x task x scale, 6144 -> 162)",
}
#: Name of the controller module in the state_dict of each family.
CONTROLLER_NAME = {MIDL: "controller", SCALE: "controller_trilinear"}


class OmniSeg(UNetBackbone):
    """Omni-Seg: one backbone pass per window, then one dynamic head per requested tissue.

    ``family`` is ``"midl"`` or ``"scale"``; the state_dict layout is the original code's
    (without its four unused modules, see ``checkpoint.py``).
    """

    def __init__(self, family: str = MIDL) -> None:
        if family not in FAMILIES:
            raise InvalidInputError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
        super().__init__()
        self.family = family
        c_in = POOLED_CHANNELS + NUM_TASKS if family == MIDL else POOLED_CHANNELS * NUM_TASKS * NUM_SCALES
        setattr(self, CONTROLLER_NAME[family], nn.Conv2d(c_in, NUM_PARAMS, kernel_size=1))
        # task/scale index tensors per (tasks, scales, device): made once, so a forward copies
        # nothing from the host (CUDA graphs capture it; no sync per batch)
        self._indices: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def controller_conv(self) -> nn.Conv2d:
        return getattr(self, CONTROLLER_NAME[self.family])

    def forward_heads(
        self,
        head_input: torch.Tensor,
        pooled: torch.Tensor,
        tasks: Sequence[int],
        scales: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Run the heads of ``tasks`` on backbone features.

        Args:
            head_input: [N, 8, H, W]; pooled: [N, 256] (from ``forward_features``).
            tasks: T task ids.
            scales: T scale ids for the scale-aware family (default: each task's own scale);
                ignored by the MIDL family.

        Returns:
            logits [N, T, 2, H, W].
        """
        task_ids = _check_tasks(tasks)
        scale_ids = [TISSUES[t].scale_id for t in task_ids] if scales is None else list(scales)
        if len(scale_ids) != len(task_ids) or not all(0 <= s < NUM_SCALES for s in scale_ids):
            raise InvalidInputError(f"scales {scales!r} must give one id in 0..3 per task")
        key = (tuple(task_ids), tuple(scale_ids), pooled.device)
        if key not in self._indices:
            with torch.inference_mode(False):  # normal tensors: usable in training and inference
                self._indices[key] = (torch.tensor(task_ids, device=pooled.device),
                                      torch.tensor(scale_ids, device=pooled.device))
        conv = self.controller_conv
        a, c = task_affine(self.family, conv.weight, conv.bias, *self._indices[key])
        params = head_params(pooled, a.to(pooled.dtype), c.to(pooled.dtype))
        return run_heads(head_input, params)

    def forward_tasks(self, images: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        """Segment ``images`` for every tissue in ``tasks`` with one backbone pass.

        Args:
            images: float32 [N, 3, H, W], RGB in [0, 1], H and W multiples of 16.
            tasks: T task ids (``omniseg_rt.tissues``); each uses its own scale id.

        Returns:
            float32 logits [N, T, 2, H, W]; channel 0 background, 1 foreground. Equal to the
            original network run once per task.
        """
        _check_images(images)
        head_input, pooled = self.forward_features(images)
        return self.forward_heads(head_input, pooled, tasks)

    def forward(self, images: torch.Tensor, tasks: Sequence[int] = tuple(range(NUM_TASKS))) -> torch.Tensor:
        return self.forward_tasks(images, tasks)


def _check_tasks(tasks: Sequence[int]) -> list[int]:
    ids = [int(t) for t in tasks]
    if not ids or not all(0 <= t < NUM_TASKS for t in ids):
        raise InvalidInputError(f"tasks must be a non-empty list of ids in 0..{NUM_TASKS - 1}, got {tasks!r}")
    return ids


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
        raise InvalidInputError(
            f"image height and width must be positive multiples of {SIZE_MULTIPLE}, got {h}x{w}; "
            "pad or crop the windows"
        )
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 by 255")


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Foreground minus background logit: ``logits`` [..., 2, H, W] (background, foreground) ->
    [..., H, W]; foreground where > 0. The one place the network's two channels become one."""
    return logits[..., 1, :, :] - logits[..., 0, :, :]
