"""Small synthetic slides for geometry tests: Aperio-style pyramidal TIFFs OpenSlide opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tissue_pattern(height: int, width: int, seed: int = 0, block: int = 24, glass_from: float = 0.85) -> np.ndarray:
    """RGB uint8 [h, w, 3]: stained-looking blocks, pink (red > 127) or purple (red < 127), and a
    glass (white) strip right of ``glass_from`` (a fraction of the width), so tissue detection has something to skip."""
    rng = np.random.default_rng(seed)
    cells = rng.random((-(-height // block), -(-width // block))) > 0.5
    on = np.kron(cells, np.ones((block, block), bool))[:height, :width]
    rgb = np.where(on[..., None], np.array([235, 120, 180], np.uint8), np.array([90, 40, 130], np.uint8))
    rgb[:, int(width * glass_from):] = 255
    return np.ascontiguousarray(rgb)


def write_aperio(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 2, tile: int = 128) -> Path:
    """A pyramid of ``levels`` top-level tiled JPEG pages (each half the previous) with an Aperio
    ImageDescription (pixel size ``mpp``, or none)."""
    import tifffile

    height, width = rgb.shape[:2]
    description = f"Aperio Image Library v12.0.0\r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q=95|AppMag = 20"
    if mpp is not None:
        description += f"|MPP = {mpp}"
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for level in range(levels):
            data = rgb[:: 2**level, :: 2**level]
            tif.write(data, tile=(tile, tile), compression="jpeg", compressionargs={"level": 95},
                      photometric="rgb", description=description if level == 0 else None, metadata=None)
    return path
