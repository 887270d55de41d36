"""Where the tissue is: a low-resolution mask from colour saturation (stained tissue vs glass).

Otsu's threshold on the saturation (max - min channel) of a thumbnail, floored so that a slide
that is all glass finds nothing, then closing, small-object and small-hole removal and a safety
dilation (scikit-image). Windows whose cells hold no tissue are never read or inferred.
"""

from __future__ import annotations

import numpy as np

#: Thumbnail pixel size the tissue mask is computed at (um/px).
TISSUE_MPP = 8.0
MIN_SATURATION = 12  # below this (0-255) a pixel is glass, whatever Otsu says
MIN_OBJECT_UM2 = 100 * 100  # tissue pieces smaller than this are dust
DILATE_UM = 32  # margin kept around tissue so that its borders are segmented


def detect_tissue(thumbnail: np.ndarray, mpp: float = TISSUE_MPP) -> np.ndarray:
    """bool [h, w] tissue mask of an RGB uint8 [h, w, 3] thumbnail whose pixels are ``mpp`` um."""
    from skimage import filters, morphology

    rgb = thumbnail.astype(np.int16)
    saturation = (rgb.max(axis=2) - rgb.min(axis=2)).astype(np.uint8)
    dark = rgb.mean(axis=2) < 200  # unstained but dark (ink aside) tissue, e.g. fat-free stroma
    threshold = MIN_SATURATION
    if saturation.max() > MIN_SATURATION:
        threshold = max(MIN_SATURATION, float(filters.threshold_otsu(saturation)))
    mask = (saturation > threshold) | (dark & (saturation > MIN_SATURATION // 2))
    radius = max(1, round(16 / mpp))
    mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(MIN_OBJECT_UM2 / mpp**2)))
    mask = morphology.remove_small_holes(mask, max_size=max(1, int(4 * MIN_OBJECT_UM2 / mpp**2)))
    return morphology.dilation(mask, morphology.disk(max(1, round(DILATE_UM / mpp))))
