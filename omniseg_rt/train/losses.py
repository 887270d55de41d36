"""The original training loss: Dice + BCE per channel, weighted 1.2 on a 2-pixel ring outside objects."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RING_WIDTH = 2
RING_WEIGHT = 1.2
SMOOTH = 1.0


def edge_ring_weight(mask: torch.Tensor, width: int = RING_WIDTH, weight: float = RING_WEIGHT) -> torch.Tensor:
    """Per-pixel weights [N, 1, H, W]: ``weight`` on background pixels within ``width`` pixels
    (8-connected, i.e. a (2w+1)^2 square) of an object, 1 elsewhere. ``mask``: {0, 1} [N, 1, H, W]."""
    grown = F.max_pool2d(mask.float(), kernel_size=2 * width + 1, stride=1, padding=width)
    ring = (grown > 0) & (mask <= 0)
    return torch.where(ring, torch.full_like(grown, weight), torch.ones_like(grown))


def dice_bce_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Loss of one task's logits [N, 2, H, W] (background, foreground) against mask [N, 1, H, W]."""
    target = torch.cat([1.0 - mask, mask], dim=1).to(logits.dtype)
    weight = edge_ring_weight(mask).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight.expand_as(logits))
    prob = torch.sigmoid(logits)
    inter = (weight * prob * target).sum(dim=(2, 3))
    union = (weight * prob).sum(dim=(2, 3)) + (weight * target).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * inter + SMOOTH) / (union + SMOOTH)
    return dice.mean() + bce
