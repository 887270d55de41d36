"""Building blocks of the Omni-Seg backbone: GroupNorm and the pre-activation residual block.

Attribute names follow the original state_dict layout (``gn1``, ``conv1``, ``downsample.0``...)
so that checkpoints trained with the original code load with strict key matching.
"""

from __future__ import annotations

import torch
from torch import nn

GN_GROUPS = 16


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(16 groups, affine, eps 1e-5): the only normalisation in the network."""
    return nn.GroupNorm(GN_GROUPS, channels, eps=1e-5, affine=True)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class ResBlock(nn.Module):
    """Pre-activation residual block.

    ``out = conv2(relu(gn2(conv1(relu(gn1(x)))))) + residual`` where the residual is ``x`` or,
    when ``project`` is set, ``conv1x1(relu(gn(x)))`` with the block's stride. No activation
    after the add.

    Shapes: [N, c_in, H, W] -> [N, c_out, H / stride, W / stride].
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, project: bool = False) -> None:
        super().__init__()
        self.gn1 = group_norm(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.gn2 = group_norm(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (
            nn.Sequential(
                group_norm(c_in),
                nn.ReLU(inplace=False),
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
            )
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.gn1(x)))
        out = self.conv2(self.relu(self.gn2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


def stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """A stage of ``blocks`` residual blocks; only the first one strides or projects."""
    project = stride != 1 or c_in != c_out
    layers = [ResBlock(c_in, c_out, stride, project)]
    layers += [ResBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)
