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


def seam_rates(mask: np.ndarray, lines: np.ndarray | list[int], valid: np.ndarray | None = None) -> tuple[float, float]:
    """How often adjacent pixels disagree across window-grid lines vs elsewhere.

    ``mask``: bool [H, W]; ``lines``: positions p (in pixels, the same for rows and columns) where
    a pair (p - 1, p) straddles a grid line; ``valid``: bool [H, W], pairs count only where both
    pixels are valid (e.g. inferred). Returns (rate across the lines, rate of all other pairs):
    the fraction of horizontally or vertically adjacent pairs whose values differ. A stitched
    mask without seams has equal rates; a window grid shows as a boundary rate several times the
    interior one.
    """
    mask = np.asarray(mask, bool)
    valid = np.ones(mask.shape, bool) if valid is None else np.asarray(valid, bool)
    counts = np.zeros((2, 2), np.int64)  # [on a line, elsewhere] x [pairs, differing]
    for axis in (0, 1):
        a, b = (mask[:-1], mask[1:]) if axis == 0 else (mask[:, :-1], mask[:, 1:])
        ok = (valid[:-1] & valid[1:]) if axis == 0 else (valid[:, :-1] & valid[:, 1:])
        on_line = np.zeros(mask.shape[axis] - 1, bool)
        positions = np.asarray([p for p in lines if 0 < p < mask.shape[axis]], int)
        on_line[positions - 1] = True
        on_line = on_line[:, None] if axis == 0 else on_line[None, :]
        differ = a != b
        for row, where in ((0, on_line & ok), (1, ~on_line & ok)):
            counts[row] += (int(where.sum()), int((differ & where).sum()))
    rate = [d / n if n else 0.0 for n, d in counts]
    return rate[0], rate[1]
