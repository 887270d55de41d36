"""A contact sheet of labelled patches: what each tissue's head finds next to what was annotated.

One row per tissue; each patch appears twice side by side, with the reference outline (white)
on the left and the predicted outline (the tissue's colour) on the right, and a caption with
the patch's Dice. Made by ``omniseg-rt evaluate DATA --sheet sheet.png`` from the user's own
patches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.fileutil import replacing
from omniseg_rt.outputs.overlay import outline
from omniseg_rt.tissues import tissue

_GAP, _CAPTION = 4, 14  # pixels between tiles, caption height
_THICK = 2  # outline thickness in pixels


def _thick(edge: np.ndarray) -> np.ndarray:
    out = edge.copy()
    for _ in range(_THICK - 1):
        out[1:] |= out[:-1].copy()
        out[:, 1:] |= out[:, :-1].copy()
    return out


def _tile(image: np.ndarray, mask: np.ndarray, colour: Sequence[int], side: int) -> np.ndarray:
    """RGB uint8 [side, side, 3]: ``image`` ([3, H, W]) with ``mask``'s outline in ``colour``."""
    rgb = image.transpose(1, 2, 0).copy()
    rgb[_thick(outline(mask))] = colour
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))


def render_sheet(path: str | os.PathLike, examples: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]],
                 side: int = 192) -> None:
    """Write the sheet PNG at ``path``.

    ``examples``: (task id, image uint8 [3, H, W], reference bool [H, W], prediction bool [H, W],
    Dice) per patch, grouped into rows by task id in order of first appearance; ``side``: tile
    side in pixels.
    """
    if not examples:
        raise InvalidInputError("a contact sheet needs at least one patch")
    rows: dict[int, list] = {}
    for example in examples:
        rows.setdefault(example[0], []).append(example)
    label = 64
    columns = max(len(r) for r in rows.values())
    width = label + columns * (2 * side + 3 * _GAP)
    height = len(rows) * (side + _CAPTION + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, (task, row) in enumerate(rows.items()):
        top = _GAP + r * (side + _CAPTION + _GAP)
        t = tissue(task)
        draw.text((_GAP, top + side // 2), t.abbrev, fill=tuple(t.colour))
        for c, (_, image, truth, pred, dice) in enumerate(row):
            left = label + c * (2 * side + 3 * _GAP)
            sheet.paste(Image.fromarray(_tile(image, truth, (255, 255, 255), side)), (left, top))
            sheet.paste(Image.fromarray(_tile(image, pred, t.colour, side)), (left + side + _GAP, top))
            draw.text((left, top + side + 1), f"reference | predicted, Dice {dice:.2f}", fill=(220, 220, 220))
    with replacing(path) as tmp:
        sheet.save(tmp, format="PNG")
