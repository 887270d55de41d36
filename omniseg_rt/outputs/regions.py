"""Where a mask can be nonzero, as its writers ask: ``occupied(y0, y1, x0, x1) -> bool`` (False
where the mask is known to be 0), and, where the callable can say (``occupied.columns(y0, y1)``
and ``occupied.rows(y0, y1)``, e.g. :class:`omniseg_rt.slide.plan.Occupancy`), the columns of
some rows that can be nonzero and the rows among them that can."""

from __future__ import annotations

import numpy as np


def occupied_columns(occupied, y0: int, y1: int, width: int) -> tuple[int, int] | None:
    """Columns [x0, x1) of rows [y0, y1) where the mask can be nonzero: all of them without
    ``occupied``; None where it says the rows are empty; the span of its cells where it can say."""
    if occupied is None:
        return 0, width
    if hasattr(occupied, "columns"):
        return occupied.columns(y0, y1)
    return (0, width) if occupied(y0, y1, 0, width) else None


def occupied_rows(occupied, y0: int, y1: int) -> tuple[int, int] | None:
    """Rows [y0', y1') within [y0, y1) where the mask can be nonzero (all of them when
    ``occupied`` cannot say which), None where none can."""
    if occupied is not None and hasattr(occupied, "rows"):
        return occupied.rows(y0, y1)
    return y0, y1


def read_occupied(mask: np.ndarray, top: int, bottom: int, left: int, right: int, occupied) -> np.ndarray:
    """bool [bottom - top, right - left]: ``mask[top:bottom, left:right] != 0``, read only in the
    rows where ``occupied`` says it can be nonzero (zero elsewhere: a read beside them would page
    in a memory-mapped canvas's glass)."""
    band = np.zeros((bottom - top, right - left), bool)
    rows = occupied_rows(occupied, top, bottom)
    if rows is not None:
        band[rows[0] - top:rows[1] - top] = np.asarray(mask[rows[0]:rows[1], left:right]) != 0
    return band
