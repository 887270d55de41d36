"""Mask agreement, one definition for training, evaluation and the accuracy gate."""

from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks of one shape; both 1.0 when both masks are empty."""
    inter = int(np.logical_and(pred, truth).sum())
    total = int(pred.sum()) + int(truth.sum())
    union = total - inter
    return (1.0 if total == 0 else 2.0 * inter / total), (1.0 if union == 0 else inter / union)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    return dice_iou(pred, truth)[0]
