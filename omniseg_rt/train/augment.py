"""Training augmentation with kornia, on GPU or CPU tensors, image and mask together.

Groups as in the original recipe, each applied with probability 0.5: geometric (translate,
rotate, shear, flips, scale 0.75-1.5) on image and mask; colour (gamma, brightness/contrast/
saturation/hue jitter for stain variation); noise (Gaussian blur, Gaussian noise, coarse
dropout). Randomness comes from torch's generator, so ``torch.manual_seed`` makes it repeatable.
"""

from __future__ import annotations

import torch

from omniseg_rt._optional import require


#: the original recipe's zoom range (patch scaled by a factor drawn from it)
ORIGINAL_SCALE = (0.75, 1.5)


def build_augmentation(scale: tuple[float, float] = ORIGINAL_SCALE) -> torch.nn.Module:
    """The augmentation pipeline; ``scale``: the zoom range of the affine group."""
    K = require("kornia.augmentation", "augment training patches")
    return K.AugmentationSequential(
        K.RandomAffine(degrees=180, translate=(0.1, 0.1), scale=scale, shear=10, p=0.5,
                       padding_mode="reflection"),
        K.RandomHorizontalFlip(p=0.5),
        K.RandomVerticalFlip(p=0.5),
        K.RandomGamma(gamma=(0.7, 1.5), p=0.5),
        K.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.04, p=0.5),
        K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=0.25),
        K.RandomGaussianNoise(mean=0.0, std=0.03, p=0.25),
        K.RandomErasing(scale=(0.01, 0.05), ratio=(0.5, 2.0), value=0.0, p=0.25),
        data_keys=["input", "mask"],
    )


def augment(aug: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
            stain_jitter: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """images float [N, 3, H, W] in [0, 1], masks float {0, 1} [N, 1, H, W] -> the same, augmented
    (``stain_jitter`` > 0: also :func:`hed_jitter` of that strength, images only)."""
    out_images, out_masks = aug(images, masks)
    if stain_jitter > 0:
        out_images = hed_jitter(out_images, stain_jitter)
    return out_images.clamp_(0.0, 1.0), (out_masks > 0.5).to(masks.dtype)


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, in optical density
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Stain augmentation (Tellez et al. 2018): each image's optical density split into
    haematoxylin, eosin and DAB, each channel scaled by U(1 - s, 1 + s) and shifted by U(-s, s),
    then recombined. images float [N, 3, H, W] in [0, 1] -> the same."""
    n = images.shape[0]
    density = -torch.log(images.clamp(min=1e-6)).movedim(1, -1)  # [N, H, W, 3]
    hed = density @ _HED_FROM_RGB.to(images)
    scale = 1 + (torch.rand(n, 1, 1, 3, device=images.device) * 2 - 1) * strength
    shift = (torch.rand(n, 1, 1, 3, device=images.device) * 2 - 1) * strength
    density = (hed * scale + shift) @ _RGB_FROM_HED.to(images)
    return torch.exp(-density).movedim(-1, 1).clamp(0.0, 1.0)
