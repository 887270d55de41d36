"""The training loss: Dice + BCE per channel, weighted 1.2 on a 2-pixel ring outside objects (the
original's), optionally with the BCE balanced between foreground and background per patch; the
exclusion term that turns one tissue's labels into negatives for the tissues it cannot be; and the
consistency term that asks a crop to agree with the whole patch where they overlap; and the
context canvases in which a patch is also learnt inside other tissue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseg_rt.errors import InvalidInputError

RING_WIDTH = 2
RING_WEIGHT = 1.2
SMOOTH = 1.0


def edge_ring_weight(mask: torch.Tensor, width: int = RING_WIDTH, weight: float = RING_WEIGHT) -> torch.Tensor:
    """Per-pixel weights [N, 1, H, W]: ``weight`` on background pixels within ``width`` pixels
    (8-connected, i.e. a (2w+1)^2 square) of an object, 1 elsewhere. ``mask``: {0, 1} [N, 1, H, W]."""
    grown = F.max_pool2d(mask.float(), kernel_size=2 * width + 1, stride=1, padding=width)
    ring = (grown > 0) & (mask <= 0)
    return torch.where(ring, torch.full_like(grown, weight), torch.ones_like(grown))


def class_balance_weight(mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights [N, 1, H, W] under which a patch's foreground and background pixels weigh
    half each (0.5 / share of each class; a patch with one class only: weights 1 there)."""
    share = mask.float().mean(dim=(2, 3), keepdim=True)
    fg = torch.where(share > 0, 0.5 / share.clamp_min(1e-6), torch.zeros_like(share))
    bg = torch.where(share < 1, 0.5 / (1 - share).clamp_min(1e-6), torch.zeros_like(share))
    one_class = (share == 0) | (share == 1)
    weight = torch.where(mask > 0, fg, bg)
    return torch.where(one_class, torch.ones_like(weight), weight)


def dice_bce_loss(logits: torch.Tensor, mask: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Loss of one task's logits [N, 2, H, W] (background, foreground) against mask [N, 1, H, W].

    ``balanced``: the BCE term weighs each patch's foreground and background pixels half each
    (:func:`class_balance_weight`), so that the best constant guess is a margin of 0 for every
    tissue, however sparse; the original weighs every pixel alike, which for the scale-aware
    controller (no bias of its own per tissue) kept the sparse tissues' margins below 0 everywhere.
    """
    target = torch.cat([1.0 - mask, mask], dim=1).to(logits.dtype)
    weight = edge_ring_weight(mask).to(logits.dtype)
    bce_weight = weight * class_balance_weight(mask).to(logits.dtype) if balanced else weight
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=bce_weight.expand_as(logits))
    prob = torch.sigmoid(logits)
    inter = (weight * prob * target).sum(dim=(2, 3))
    union = (weight * prob).sum(dim=(2, 3)) + (weight * target).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * inter + SMOOTH) / (union + SMOOTH)
    return dice.mean() + bce


def exclusion_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE towards "background" of other tissues' logits [N, U, 2, H, W] on the foreground
    pixels of ``mask`` [N, 1, H, W] (the batch's own tissue): a pixel labelled proximal tubule is
    not a distal tubule nor an artery (Shi et al. 2021, "Marginal loss and exclusion loss for
    partially supervised multi-organ segmentation"). 0 when the batch has no foreground."""
    fg = mask[:, None].to(logits.dtype)  # [N, 1, 1, H, W]
    target = torch.cat([torch.ones_like(fg), torch.zeros_like(fg)], dim=2).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * fg).sum() / (fg.sum() * logits.shape[1] * logits.shape[2]).clamp_min(1.0)


def context_crop(side: int, generator: torch.Generator | None = None, step: int = 32) -> tuple[int, int, int]:
    """A random square crop (y, x, size) of a ``side`` px patch for the consistency term: size
    between side / 2 and side - step, origin and size multiples of ``step`` (the backbone's
    grids stay aligned with the patch's)."""
    sizes = list(range(max(step, side // 2 // step * step), side - step + 1, step))
    if not sizes:
        raise InvalidInputError(f"--consistency: a {side} px patch is too small for a crop (needs >= {2 * step} px); "
                                "train without --consistency")
    size = sizes[int(torch.randint(len(sizes), (1,), generator=generator))]
    y, x = (int(v) * step for v in torch.randint((side - size) // step + 1, (2,), generator=generator))
    return y, x, size


def consistency_loss(crop_logits: torch.Tensor, whole_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of foreground probabilities [N, 2, h, w] (background, foreground)
    between a crop's prediction and the whole patch's over the same pixels, the whole patch's taken
    as the target (no gradient): the head should not change its mind when it sees less context,
    which is what makes overlapping slide windows disagree (the pooled conditioning and the
    GroupNorm statistics are per window)."""
    def probability(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 1] - logits[:, 0])

    return F.mse_loss(probability(crop_logits), probability(whole_logits).detach())


def in_context(images: torch.Tensor, margin: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int, int]:
    """Each patch of ``images`` [N, 3, h, w] inside a canvas [N, 3, h + margin, w + margin] of
    other tissue, and the patch's origin (y, x) in it (integers in 0..margin, the same for the batch).

    The context is the batch's next patch (rolled by one; a batch of one sees itself), mirrored
    into a 2 x 2 tiling so that no edge is a cut. A slide window sees a patch's pixels with
    whatever surrounds them, and the GroupNorm statistics and pooled conditioning of the window
    change with it: trained on patches alone, the heads change their mind with the context
    (DEVELOPERS.md, "Overlap and blending"); learnt in context, they should not."""
    h, w = images.shape[-2:]
    other = images.roll(1, dims=0)
    tiles = torch.cat([other, other.flip(-1)], dim=-1)
    canvas = torch.cat([tiles, tiles.flip(-2)], dim=-2)[..., :h + margin, :w + margin].clone()
    y, x = (int(v) for v in torch.randint(margin + 1, (2,), generator=generator))
    canvas[..., y:y + h, x:x + w] = images
    return canvas, y, x
