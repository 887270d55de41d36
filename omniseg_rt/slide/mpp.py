"""A slide's pixel size in micrometres per pixel (level 0), and where it came from.

Order: the user's ``--mpp``; OpenSlide's ``openslide.mpp-x/y``; the TIFF resolution tags; the
objective power (40x = 0.25 um/px, with a warning: scanners differ by up to ~10 %).
"""

from __future__ import annotations

from collections.abc import Mapping

from omniseg_rt.errors import InvalidInputError

#: Pixel sizes outside this range are not believed (e.g. a 72 dpi default written by an editor).
PLAUSIBLE_MPP = (0.05, 100.0)
_UNIT_UM = {"centimeter": 1e4, "inch": 25_400.0, "3": 1e4, "2": 25_400.0}


class MissingPixelSizeError(InvalidInputError):
    """The slide states no pixel size and none was given."""


def resolve_mpp(name: str, properties: Mapping[str, str], override: float | None = None) -> tuple[float, str, list[str]]:
    """(mpp, source, warnings) for a slide called ``name`` with OpenSlide-style ``properties``.

    ``tiff.XResolution`` / ``tiff.ResolutionUnit`` are OpenSlide's names for the TIFF tags; the
    plain-image reader fills them the same way. Anisotropic pixels use the mean, with a warning.
    """
    if override is not None:
        if not PLAUSIBLE_MPP[0] <= override <= PLAUSIBLE_MPP[1]:
            raise InvalidInputError(f"--mpp {override}: a pixel size must lie in {PLAUSIBLE_MPP} um/px")
        return float(override), "--mpp", []
    warnings: list[str] = []
    x, y = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    source = "openslide.mpp-x/y"
    if not _plausible(x):
        x = y = None
        unit = _UNIT_UM.get(str(properties.get("tiff.ResolutionUnit", "")).lower())
        rx, ry = _float(properties.get("tiff.XResolution")), _float(properties.get("tiff.YResolution"))
        if unit and rx:
            x = unit / rx
            y = unit / ry if ry else x
            source = "TIFF resolution tags"
    if not _plausible(x):
        power = _float(properties.get("openslide.objective-power"))
        if power:
            x = y = 10.0 / power
            source = "objective power"
            warnings.append(f"{name}: pixel size {x:.3g} um/px estimated from the {power:g}x objective power "
                            f"(scanners differ by up to ~10%); pass --mpp to set it exactly")
    if not _plausible(x):
        raise MissingPixelSizeError(
            f"{name}: the slide states no pixel size (no openslide.mpp-x, TIFF resolution or objective power); "
            f"pass --mpp UM_PER_PX, e.g. --mpp 0.25 for a 40x or 0.5 for a 20x scan")
    y = y if _plausible(y) else x
    if abs(x - y) > 0.01 * x:
        warnings.append(f"{name}: pixels are not square ({x:.4g} x {y:.4g} um); using their mean")
    return (x + y) / 2, source, warnings


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]
