"""The task-independent part of Omni-Seg: a 2D pre-activation residual U-Net.

The backbone and decoder do not see the task, so one pass serves every tissue of a window;
only the controller and the dynamic heads (``heads.py``) depend on the task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omniseg_rt.model.blocks import group_norm, stage

HEAD_CHANNELS = 8
POOLED_CHANNELS = 256
#: Input height and width must be multiples of this (four stride-2 stages).
SIZE_MULTIPLE = 16


class UNetBackbone(nn.Module):
    """Encoder (stem + 5 stages), fusion conv, additive-skip decoder, head-input conv and GAP.

    ``forward_features``: images float32 [N, 3, H, W] in [0, 1] (H, W multiples of 16) ->
    (head_input [N, 8, H, W], pooled [N, 256]).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer0 = stage(32, 32, 1, stride=1)
        self.layer1 = stage(32, 64, 2, stride=2)
        self.layer2 = stage(64, 128, 2, stride=2)
        self.layer3 = stage(128, 256, 2, stride=2)
        self.layer4 = stage(256, 256, 2, stride=2)
        self.fusionConv = nn.Sequential(
            group_norm(256), nn.ReLU(), nn.Conv2d(256, 256, kernel_size=1, bias=False)
        )
        self.x8_resb = stage(256, 128, 1, stride=1)
        self.x4_resb = stage(128, 64, 1, stride=1)
        self.x2_resb = stage(64, 32, 1, stride=1)
        self.x1_resb = stage(32, 32, 1, stride=1)
        self.precls_conv = nn.Sequential(
            group_norm(32), nn.ReLU(), nn.Conv2d(32, HEAD_CHANNELS, kernel_size=1, bias=True)
        )
        self.GAP = nn.Sequential(group_norm(256), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] float in [0, 1] -> (head_input [N, 8, H, W], pooled [N, 256]).

        Runs in the memory format of the weights: ``load_checkpoint`` puts them in channels_last,
        which oneDNN runs faster on CPUs and which is the format the upstream conformance logits
        were computed in (contiguous differs from them by about 1e-3 on random weights).
        """
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.layer0(self.conv1(images))
        skip0 = x
        skip1 = x = self.layer1(x)
        skip2 = x = self.layer2(x)
        skip3 = x = self.layer3(x)
        x = self.fusionConv(self.layer4(x))
        pooled = self.GAP(x).flatten(1)
        x = self.x8_resb(_up(x) + skip3)
        x = self.x4_resb(_up(x) + skip2)
        x = self.x2_resb(_up(x) + skip1)
        x = self.x1_resb(_up(x) + skip0)
        return self.precls_conv(x), pooled


def _up(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
