"""One label per pixel across tissues, the original Omni-Seg pipeline's merge (``segment --exclusive``).

The six masks are independent and may overlap (a pixel both distal and proximal tubule). The
original pipeline settles that per pixel; so does :func:`merge_labels`:

1. candidates are the tissues whose mask is foreground there;
2. the glomerular unit covers its tuft: CAP and TUFT compete as one candidate, the unit, with the
   higher of their scores (a tuft pixel is a unit pixel too);
3. the candidate with the highest score wins, ties to the lowest task id (the original's argmax
   over vote counts; here scores are the stitched foreground probabilities, uint8);
4. where the unit wins, the pixel is TUFT if the tuft's own mask is foreground there (a tuft pixel
   needs tuft evidence), CAP otherwise;
5. the tissue mask gates everything: background off tissue.

Label values: 0 background, ``task_id + 1`` for each tissue (:data:`LABELS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniseg_rt.tissues import TISSUES

#: label value -> tissue name; 0 is background
LABELS = {0: "background", **{t.task_id + 1: t.name for t in TISSUES}}
CAP, TUFT = 2, 3  # task ids of the glomerular unit and its tuft


def merge_labels(task_ids: Sequence[int], masks: np.ndarray, scores: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """uint8 [h, w] labels (0 background, task id + 1) of one block of pixels.

    ``task_ids``: the T tissues present, any order; ``masks``: bool [T, h, w] foreground;
    ``scores``: uint8 [T, h, w] (higher = more confident; only compared where the mask is
    foreground); ``gate``: bool [h, w] tissue mask.
    """
    task_ids = list(task_ids)
    if masks.shape != scores.shape or masks.shape[0] != len(task_ids) or masks.shape[1:] != gate.shape:
        raise ValueError(f"merge_labels: masks {masks.shape}, scores {scores.shape}, gate {gate.shape} and "
                         f"{len(task_ids)} tissues do not agree")
    # candidates as (task id standing for them, foreground, score); the unit joins CAP and TUFT
    candidates = {}
    for i, task in enumerate(task_ids):
        key = CAP if task in (CAP, TUFT) else task
        fg = masks[i]
        score = np.where(fg, scores[i].astype(np.int16), -1)  # not foreground: never wins
        if key in candidates:
            other_fg, other_score = candidates[key]
            fg, score = fg | other_fg, np.maximum(score, other_score)
        candidates[key] = (fg, score)
    order = sorted(candidates)  # argmax keeps the first maximum: ties go to the lowest task id
    stacked = np.stack([candidates[k][1] for k in order])
    best = np.argmax(stacked, axis=0)
    any_fg = np.take_along_axis(stacked, best[None], axis=0)[0] >= 0
    labels = np.asarray(order, np.uint8)[best] + 1
    if TUFT in task_ids:
        tuft = masks[task_ids.index(TUFT)]
        labels[(labels == CAP + 1) & tuft] = TUFT + 1
    labels[~(any_fg & gate)] = 0
    return labels


def write_label_map(labels: np.ndarray, shape: tuple[int, int], mpp: float, groups, gate: np.ndarray,
                    gate_mpp: float, band_rows: int = 1024, occupied=None) -> None:
    """Fill ``labels`` (uint8 [H, W] = ``shape``, e.g. a zeroed memmap) at ``mpp`` um/px, band by band.

    ``groups``: [(task ids, masks uint8 [T, h, w] 0/255, scores uint8 [T, h, w], group mpp)], each
    sampled at the nearest pixel of its own grid; ``gate``: bool tissue mask at ``gate_mpp``;
    ``occupied(y0, y1, x0, x1) -> bool``: False where every mask is known to be 0 (skipped).
    """
    height, width = shape

    def nearest(count: int, source_mpp: float, size: int) -> np.ndarray:
        return np.minimum(((np.arange(count) + 0.5) * mpp / source_mpp).astype(np.int64), size - 1)

    columns = [nearest(width, g_mpp, masks.shape[2]) for _, masks, _, g_mpp in groups]
    gate_cols = nearest(width, gate_mpp, gate.shape[1])
    for top in range(0, height, band_rows):
        n = min(band_rows, height - top)
        if occupied is not None and not occupied(top, top + n, 0, width):
            continue
        task_ids, masks, scores = [], [], []
        for (tasks, m, s, g_mpp), cols in zip(groups, columns):
            rows = nearest(top + n, g_mpp, m.shape[1])[top:]
            lo, hi = int(rows[0]), int(rows[-1]) + 1  # read the rows once, then pick
            task_ids.extend(tasks)
            masks.append(np.asarray(m[:, lo:hi])[:, rows - lo][:, :, cols] > 0)
            scores.append(np.asarray(s[:, lo:hi])[:, rows - lo][:, :, cols])
        gate_rows = nearest(top + n, gate_mpp, gate.shape[0])[top:]
        labels[top:top + n] = merge_labels(task_ids, np.concatenate(masks), np.concatenate(scores),
                                           gate[gate_rows][:, gate_cols])


class LabelMask:
    """``labels == value`` of a (memory-mapped) label map, read lazily by slices (for tracing)."""

    def __init__(self, labels: np.ndarray, value: int) -> None:
        self.labels, self.value = labels, value
        self.shape = labels.shape
        self.ndim = 2

    def __getitem__(self, key):
        return np.asarray(self.labels[key]) == self.value
