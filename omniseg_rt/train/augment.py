"""Training augmentation with kornia, on GPU or CPU tensors, image and mask together.

Groups as in the original recipe, each applied with probability 0.5: geometric (translate,
rotate, shear, flips, scale 0.75-1.5) on image and mask; colour (gamma, brightness/contrast/
saturation/hue jitter for stain variation); noise (Gaussian blur, Gaussian noise, coarse
dropout). Randomness comes from torch's generator, so ``torch.manual_seed`` makes it repeatable.
"""

from __future__ import annotations

import torch

from omniseg_rt._optional import require


def build_augmentation() -> torch.nn.Module:
    K = require("kornia.augmentation", "augment training patches")
    return K.AugmentationSequential(
        K.RandomAffine(degrees=180, translate=(0.1, 0.1), scale=(0.75, 1.5), shear=10, p=0.5,
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


def augment(aug: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images float [N, 3, H, W] in [0, 1], masks float {0, 1} [N, 1, H, W] -> the same, augmented."""
    out_images, out_masks = aug(images, masks)
    return out_images.clamp_(0.0, 1.0), (out_masks > 0.5).to(masks.dtype)
