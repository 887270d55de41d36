"""Per-tissue masks as a pyramidal, tiled, compressed OME-TIFF, streamed tile by tile.

The masks of one scale group (uint8 [T, H, W], 0 or 255, often a ``np.memmap`` far larger than
RAM) are written as one OME image with axes ``CYX`` (one channel per tissue), its pixel size in
the OME metadata and in the TIFF resolution tags, and reduced levels in SubIFDs, each half the
size of the one above (nearest downsampling: fine for 0/255 masks) until the largest side fits
in one tile. Only one tile of pixels is in memory at a time (a few with ``occupied``). The file
is written under a temporary name and renamed onto ``path`` when complete.

Given ``occupied`` (where the masks can be nonzero), tiles elsewhere are not read: one
compressed empty tile is written for all of them, and the others are compressed here (deflate, a
few threads), so writing costs follow the tissue, not the slide's area.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.fileutil import temp_path
from omniseg_rt.hardware import default_threads
from omniseg_rt.outputs.regions import occupied_columns, occupied_rows

log = logging.getLogger(__name__)

#: Above this many uncompressed bytes the file is written as BigTIFF (offsets past 4 GiB).
_BIGTIFF_BYTES = 2**32 - 2**25


def pyramid_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(H, W) of every pyramid level: level k is ceil(H / 2**k) x ceil(W / 2**k), down to the
    first level whose largest side is <= ``tile``."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        k = len(shapes)
        shapes.append((math.ceil(height / 2**k), math.ceil(width / 2**k)))
    return shapes


def _tile_regions(shape: tuple[int, int, int], level: int, tile: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(channel, y0, y1, x0, x1) of each tile of pyramid ``level`` in level-0 pixels, channel by
    channel, row-major: a level-k tile is the strided region ``masks[c, y0:y1:2**k, x0:x1:2**k]``."""
    channels, height, width = shape
    span = tile * 2**level  # level-0 pixels covered by one level-k tile side
    for c in range(channels):
        for y0 in range(0, height, span):
            for x0 in range(0, width, span):
                yield c, y0, min(y0 + span, height), x0, min(x0 + span, width)


def _level_tiles(masks: np.ndarray, level: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles of pyramid ``level`` (see :func:`_tile_regions`): uint8 [<=tile, <=tile] each;
    tifffile pads edge tiles to the full tile size."""
    step = 2**level
    for c, y0, y1, x0, x1 in _tile_regions(masks.shape, level, tile):
        yield np.ascontiguousarray(masks[c, y0:y1:step, x0:x1:step], dtype=np.uint8)


def _occupied_parts(masks: np.ndarray, c: int, region: tuple[int, int, int, int], step: int, tile: int,
                    occupied: Callable[..., bool]) -> np.ndarray:
    """One level tile (uint8 [tile, tile], zero-padded) of ``region`` (level-0 y0, y1, x0, x1,
    sampled every ``step`` pixels), read only where ``occupied``: a reduced level's tile spans
    ``tile * step`` level-0 pixels a side, mostly glass on a large slide, so it is read in
    blocks of about ``tile`` level-0 pixels, the empty ones skipped and the others only in the
    rows of the plan's cells (reading beside them would page in the canvas's glass)."""
    y0, y1, x0, x1 = region
    out = np.zeros((tile, tile), np.uint8)
    block = step * max(1, tile // step)  # level-0 pixels, a multiple of step: samples stay on the level's grid
    for by in range(y0, y1, block):
        for bx in range(x0, x1, block):
            ey, ex = min(by + block, y1), min(bx + block, x1)
            rows = occupied_rows(occupied, by, ey) if occupied(by, ey, bx, ex) else None
            if rows is not None:
                first = by + -(-(rows[0] - by) // step) * step  # the level's first sampled row among them
                part = masks[c, first:rows[1]:step, bx:ex:step]
                oy, ox = (first - y0) // step, (bx - x0) // step
                out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    return out


def _deflate(data: bytes) -> bytes:
    """A zlib stream of ``data`` (what TIFF's Adobe Deflate holds), by libdeflate through
    imagecodecs: 2.5x zlib's speed at the same level on mask tiles, slightly smaller."""
    import imagecodecs

    return imagecodecs.deflate_encode(data, level=6)


def _compressed_tiles(masks: np.ndarray, level: int, tile: int, occupied: Callable[..., bool]) -> Iterator[bytes]:
    """The tiles of :func:`_level_tiles`, zlib-compressed and padded to full tiles, with the
    tiles (and, at reduced levels, the parts of tiles) ``occupied`` says are empty never read
    (one shared compressed empty tile)."""
    step = 2**level
    empty = _deflate(bytes(tile * tile))

    def compress(c: int, region: tuple[int, int, int, int]) -> bytes:
        return _deflate(_occupied_parts(masks, c, region, step, tile, occupied).tobytes())

    def done(item) -> bytes:
        return item if isinstance(item, bytes) else item.result()

    workers = min(4, default_threads())
    with ThreadPoolExecutor(workers) as pool:  # libdeflate releases the GIL
        pending: deque = deque()  # compressed tiles and futures, in file order
        row, cols = None, None  # the tiles' row and its occupied columns: one question per row, most are glass
        for c, y0, y1, x0, x1 in _tile_regions(masks.shape, level, tile):
            if row != (y0, y1):
                row, cols = (y0, y1), occupied_columns(occupied, y0, y1, masks.shape[2])
            if cols is not None and x0 < cols[1] and cols[0] < x1 and occupied(y0, y1, x0, x1):
                pending.append(pool.submit(compress, c, (y0, y1, x0, x1)))
            else:
                pending.append(empty)
            if len(pending) > 2 * workers:
                yield done(pending.popleft())
        while pending:
            yield done(pending.popleft())


def _check(masks: np.ndarray, channel_names: Sequence[str], mpp: float, tile: int) -> None:
    if getattr(masks, "ndim", None) != 3 or getattr(masks, "dtype", None) != np.uint8:
        found = f"{type(masks).__name__} {getattr(masks, 'dtype', '?')} {getattr(masks, 'shape', '?')}"
        raise InvalidInputError(f"masks must be a uint8 [T, H, W] array; got {found}")
    if min(masks.shape) == 0:
        raise InvalidInputError(f"masks must not be empty; got shape {masks.shape}")
    if len(channel_names) != masks.shape[0]:
        raise InvalidInputError(
            f"{len(channel_names)} channel names for {masks.shape[0]} mask channels; give one name per channel"
        )
    try:
        ok = math.isfinite(float(mpp)) and float(mpp) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidInputError(f"mpp must be a positive number of micrometres per pixel; got {mpp!r}")
    if tile < 16 or tile % 16:
        raise InvalidInputError(f"tile must be a positive multiple of 16 (a TIFF rule); got {tile}")


def write_mask_tiff(
    path: str | os.PathLike,
    masks: np.ndarray,
    channel_names: Sequence[str],
    mpp: float,
    *,
    tile: int = 512,
    compression: str = "zlib",
    occupied: Callable[[int, int, int, int], bool] | None = None,
) -> None:
    """Write ``masks`` (uint8 [T, H, W]: a memmap, or any array that slices) as a pyramidal OME-TIFF at ``path``.

    ``channel_names`` names the T channels (e.g. tissue abbreviations); ``mpp`` is the masks'
    pixel size in micrometres per pixel (level 0; level k has ``mpp * 2**k``). ``tile`` is the
    TIFF tile side in pixels (multiple of 16); ``compression`` any tifffile codec name.
    ``occupied(y0, y1, x0, x1) -> bool`` (level-0 rows and columns): False where the masks are
    known to be 0; with zlib those tiles are not read (see the module docstring).
    """
    _check(masks, channel_names, mpp, tile)
    mpp = float(mpp)  # numpy scalars break tifffile's rational tags
    target = Path(path)
    tmp = temp_path(target)
    channels, height, width = masks.shape
    shapes = pyramid_shapes(height, width, tile)
    options = dict(
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="minisblack",
        compression=compression,
        resolutionunit="CENTIMETER",
    )
    metadata = {
        "axes": "CYX",
        "PhysicalSizeX": float(mpp),
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": float(mpp),
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": [str(n) for n in channel_names]},
    }
    bigtiff = channels * height * width * 4 // 3 > _BIGTIFF_BYTES  # all levels, uncompressed
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif:
            for level, (h, w) in enumerate(shapes):
                pixels_per_cm = 1e4 / (mpp * 2**level)
                extra = (
                    {"subifds": len(shapes) - 1, "metadata": metadata}
                    if level == 0
                    else {"subfiletype": 1, "metadata": None}
                )
                tiles = (_compressed_tiles(masks, level, tile, occupied)
                         if occupied is not None and compression == "zlib" else _level_tiles(masks, level, tile))
                tif.write(
                    tiles,
                    shape=(channels, h, w),
                    resolution=(pixels_per_cm, pixels_per_cm),
                    **options,
                    **extra,
                )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s: %d channels, %dx%d px at %.4g um/px, %d levels", target, channels, width,
             height, mpp, len(shapes))


def read_mask_tiff(path: str | os.PathLike, level: int = 0) -> tuple[np.ndarray, float, list[str]]:
    """Read one pyramid level of a mask OME-TIFF written by :func:`write_mask_tiff`.

    Returns (uint8 [C, H, W] pixels of that level, its pixel size in um/px, the C channel
    names). Reads the whole level into memory: for tests, small slides and reduced levels.
    """
    target = Path(path)
    if not target.is_file():
        raise MissingFileError(f"mask TIFF {target} does not exist")
    with tifffile.TiffFile(target) as tif:
        if not tif.is_ome or not tif.series:
            raise InvalidInputError(f"{target} is not an OME-TIFF")
        levels = tif.series[0].levels
        if not 0 <= level < len(levels):
            raise InvalidInputError(f"{target} has pyramid levels 0..{len(levels) - 1}; asked for {level}")
        pixels = levels[level].asarray()
        meta = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    image = meta[0] if isinstance(meta, list) else meta
    info = image["Pixels"]
    channels = info.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = [str(ch.get("Name", f"channel {i}")) for i, ch in enumerate(channels)]
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    mpp = float(info["PhysicalSizeX"]) * 2**level
    return pixels, mpp, names


def read_mask_into(path: str | os.PathLike, canvas: np.ndarray, channel_names: Sequence[str]) -> bool:
    """Copy level 0 of a mask OME-TIFF written by :func:`write_mask_tiff` into ``canvas`` (uint8
    [C, H, W], e.g. a memmap larger than RAM), one tile at a time.

    Returns False, leaving ``canvas`` untouched, when the file is missing, unreadable, or its
    shape or channel names differ from ``canvas`` and ``channel_names``.
    """
    target = Path(path)
    try:
        with tifffile.TiffFile(target) as tif:
            series = tif.series[0]
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            image = image[0] if isinstance(image, list) else image
            channels = image["Pixels"].get("Channel", [])
            channels = channels if isinstance(channels, list) else [channels]
            names = [str(ch.get("Name", "")) for ch in channels]
            if tuple(series.shape) != tuple(canvas.shape) or names != [str(n) for n in channel_names]:
                return False
            height, width = canvas.shape[1:]
            for c in range(canvas.shape[0]):
                page = series.pages[c]
                page = page.aspage() if hasattr(page, "aspage") else page
                for tile, index, _ in page.segments():
                    top, left = index[2], index[3]
                    h, w = min(page.tilelength, height - top), min(page.tilewidth, width - left)
                    canvas[c, top:top + h, left:left + w] = 0 if tile is None else tile[0, :h, :w, 0]
    except (OSError, ValueError, KeyError, IndexError, TypeError, tifffile.TiffFileError) as exc:
        log.info("%s: not reused (%s)", target, exc)
        return False
    return True
