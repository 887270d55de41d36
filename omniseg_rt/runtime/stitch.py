"""Window outputs into the canvas: pure numpy, no I/O beyond the (memory-mapped) canvas.

Each window writes only its cell (its valid centre), so a canvas pixel comes from exactly one
window and the result does not depend on the order windows finish in.
"""

from __future__ import annotations

import numpy as np

from omniseg_rt.slide.plan import WindowSpec


def stitch_window(canvas: np.ndarray, spec: WindowSpec, margins: np.ndarray) -> None:
    """Write the cell of ``spec`` into ``canvas`` (uint8 [T, H, W], 0/255).

    ``margins``: float32 [T, window, window] foreground-minus-background logits of the window;
    a pixel is foreground where its margin is > 0.
    """
    y0, y1, x0, x1 = spec.cell
    cy, cx = spec.crop
    cell = margins[:, cy:cy + (y1 - y0), cx:cx + (x1 - x0)]
    canvas[:, y0:y1, x0:x1] = np.where(cell > 0, np.uint8(255), np.uint8(0))
