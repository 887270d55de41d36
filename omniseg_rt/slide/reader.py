"""Open a slide and read RGB regions from it, thread-safely, white outside the slide.

OpenSlide reads the vendor formats and DICOM (a DICOM slide is a folder: any of its ``.dcm``
files opens the series); PNG, JPEG and plain (strip) TIFF files are read by Pillow as one-level
slides, which need ``--mpp`` unless they carry a resolution.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.slide.discover import is_dicom_folder, slide_name
from omniseg_rt.slide.mpp import resolve_mpp

log = logging.getLogger(__name__)
_THUMB_TILE = 2048  # level pixels read per piece when making a thumbnail (memory stays flat)
#: decoded tiles each slide handle keeps (OpenSlide's default is 32 MiB): windows overlap and
#: neighbours share tiles, and 64 MiB keeps those of a band's next windows on a 20,480 px wide
#: 40x slide (reading 13-19 % faster there on threads and processes alike; 128 MiB gained no more)
READ_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class SlideGeometry:
    """What the planner needs to know about a slide; no open handle.

    ``l0_size`` and ``level_sizes`` are (width, height) in pixels; ``mpp`` is level 0's pixel
    size in micrometres; ``level_downsamples[k]`` is level k's pixel size over level 0's.
    """

    name: str
    path: str
    vendor: str
    l0_size: tuple[int, int]
    level_sizes: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str

    def level_for(self, target_mpp: float) -> int:
        """The coarsest level whose pixels are at least as fine as ``target_mpp`` (0 if none is).

        Within 1 %: pyramids state downsamples like 2.0005 or 4.0008 (odd level sizes), and
        reading level 0 instead would cost 4x the decoding for a 0.05 % sharper window.
        """
        fine = [k for k, d in enumerate(self.level_downsamples) if self.mpp * d <= target_mpp * 1.01]
        return max(fine, key=lambda k: self.level_downsamples[k]) if fine else 0


class SlideReader:
    """An open slide. ``read`` may be called from several threads at once."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(f"{self.path}: no such slide")
        name = slide_name(self.path)
        target = self.path
        if self.path.is_dir():
            if not is_dicom_folder(self.path):
                raise InvalidInputError(f"{self.path}: a folder is a slide only when it holds DICOM (.dcm) files")
            target = sorted(p for p in self.path.iterdir() if p.suffix.lower() == ".dcm")[0]
        self._lock: threading.Lock | None = None
        try:
            self._slide = openslide.OpenSlide(str(target))
            properties = dict(self._slide.properties)
            _set_cache(self._slide)
        except openslide.OpenSlideUnsupportedFormatError:
            self._slide, properties = self._open_plain_image(target, name), {}
            properties.update(self._plain_resolution)
            self._lock = threading.Lock()  # Pillow images are not safe to crop from many threads
        except openslide.OpenSlideError as exc:
            raise InvalidInputError(f"{self.path}: OpenSlide cannot read this slide ({exc}); "
                                    f"the file may be truncated or corrupt") from None
        self.mpp, source, self.warnings = resolve_mpp(name, properties, mpp)
        self.geometry = SlideGeometry(
            name=name, path=str(self.path), vendor=properties.get("openslide.vendor", "image"),
            l0_size=tuple(self._slide.dimensions), level_sizes=tuple(tuple(s) for s in self._slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples), mpp=self.mpp, mpp_source=source)
        self.properties = properties

    def _open_plain_image(self, path: Path, name: str):
        import openslide
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidInputError(f"{path}: neither a slide OpenSlide opens nor an image Pillow reads ({exc}); "
                                    f"check the file (truncated? not a slide?)") from None
        self._plain_resolution = _pil_resolution(image)
        log.info("%s: read as a one-level image (%s)", name, image.format)
        return openslide.ImageSlide(image.convert("RGBA") if image.mode not in ("RGB", "RGBA") else image)

    def read_image(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]):
        """RGB PIL image of ``size`` = (w, h) level pixels whose top-left is ``l0_xy`` (level-0
        pixels, may be negative or beyond the slide: those pixels are white). A PIL image, so that
        resizing it needs no copy to numpy and back."""
        import openslide

        try:
            if self._lock is None:
                region = self._slide.read_region(l0_xy, level, size)
            else:
                with self._lock:
                    region = self._slide.read_region(l0_xy, level, size)
        except openslide.OpenSlideError as exc:
            raise InvalidInputError(f"{self.path}: reading level {level} at {l0_xy} failed ({exc}); "
                                    f"the file may be truncated or corrupt") from None
        return _on_white(region)

    def read(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """:meth:`read_image` as RGB uint8 [h, w, 3] (read-only)."""
        return np.asarray(self.read_image(l0_xy, level, size))

    def thumbnail(self, target_mpp: float) -> np.ndarray:
        """The whole slide at about ``target_mpp`` um/px: RGB uint8 [h, w, 3], h = ceil(H0 * mpp /
        target_mpp). Read in pieces of the best level, so memory stays flat for any slide size."""
        from PIL import Image

        g = self.geometry
        out_w, out_h = (max(1, math.ceil(s * g.mpp / target_mpp)) for s in g.l0_size)
        level = g.level_for(target_mpp)
        down = g.level_downsamples[level]
        lw, lh = g.level_sizes[level]
        sx, sy = out_w / lw, out_h / lh
        thumb = np.full((out_h, out_w, 3), 255, np.uint8)
        for y in range(0, lh, _THUMB_TILE):
            for x in range(0, lw, _THUMB_TILE):
                w, h = min(_THUMB_TILE, lw - x), min(_THUMB_TILE, lh - y)
                x0, y0 = math.floor(x * sx), math.floor(y * sy)
                x1, y1 = max(x0 + 1, math.floor((x + w) * sx)), max(y0 + 1, math.floor((y + h) * sy))
                piece = self.read_image((round(x * down), round(y * down)), level, (w, h))
                resized = np.asarray(piece.resize((x1 - x0, y1 - y0), Image.BILINEAR))
                thumb[y0:y1, x0:x1] = resized[: out_h - y0, : out_w - x0]
        return thumb

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_slide(path: str | Path, mpp: float | None = None) -> SlideReader:
    """Open ``path`` (file or DICOM folder); ``mpp`` overrides the slide's pixel size."""
    return SlideReader(path, mpp)


def _set_cache(slide) -> None:
    """Give ``slide`` a tile cache of :data:`READ_CACHE_BYTES` (OpenSlide 4.0 and later)."""
    import openslide
    from openslide.lowlevel import OpenSlideVersionError

    try:
        slide.set_cache(openslide.OpenSlideCache(READ_CACHE_BYTES))
    except OpenSlideVersionError:  # an OpenSlide older than 4.0: its own default cache
        log.debug("OpenSlide %s has no per-slide caches", openslide.__library_version__)


def _on_white(region):
    """RGBA PIL image (straight alpha) over white -> RGB PIL image: transparent = outside the
    slide = glass. Opaque regions (nearly all) are converted by PIL alone (half the time of a
    numpy round trip)."""
    from PIL import Image

    if region.mode == "RGB":
        return region
    if region.mode != "RGBA" or region.getextrema()[3][0] == 255:
        return region.convert("RGB")
    rgba = np.asarray(region)
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def _pil_resolution(image) -> dict[str, str]:
    """TIFF/PNG resolution as OpenSlide-style ``tiff.*`` properties ({} when absent)."""
    if "resolution" in image.info:  # TIFF: (x, y) per resolution_unit (2 inch, 3 centimetre)
        (x, y), unit = image.info["resolution"], {2: "inch", 3: "centimeter"}.get(image.info.get("resolution_unit"))
    elif "dpi" in image.info:
        (x, y), unit = image.info["dpi"], "inch"
    else:
        return {}
    return {"tiff.XResolution": str(float(x)), "tiff.YResolution": str(float(y)), "tiff.ResolutionUnit": unit or ""}
