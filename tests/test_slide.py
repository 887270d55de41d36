"""Pixel size resolution and tissue detection on real slides."""

from __future__ import annotations

import pytest

from conftest import SLIDES
from omniseg_rt.slide import MissingPixelSizeError, detect_tissue, open_slide, resolve_mpp
from omniseg_rt.errors import InvalidInputError


def test_pixel_size_sources_in_order():
    assert resolve_mpp("s", {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"})[:2] == (0.25, "openslide.mpp-x/y")
    mpp, source, _ = resolve_mpp("s", {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
    assert (mpp, source) == (pytest.approx(0.25), "TIFF resolution tags")
    mpp, source, warnings = resolve_mpp("s", {"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch",
                                              "openslide.objective-power": "20"})
    assert (mpp, source) == (0.5, "objective power") and "objective power" in warnings[0]  # 72 dpi not believed
    assert resolve_mpp("s", {"openslide.mpp-x": "0.25"}, override=0.3)[:2] == (0.3, "--mpp")
    with pytest.raises(MissingPixelSizeError, match="s: .*--mpp"):
        resolve_mpp("s", {})
    with pytest.raises(InvalidInputError, match="--mpp 0"):
        resolve_mpp("s", {}, override=0.0)


def test_real_slides_geometry_and_tissue():
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        g = slide.geometry
        assert (g.vendor, g.l0_size, g.mpp) == ("aperio", (2220, 2967), 0.499)
        thumb = slide.thumbnail(8.0)
        assert thumb.shape == (186, 139, 3)
        tissue = detect_tissue(thumb, 8.0)
        assert 0.2 < tissue.mean() < 0.9  # skin section on glass: some of each
    with open_slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5) as slide:
        assert slide.geometry.level_for(1.0) == 1 and slide.geometry.level_for(0.6) == 0
    with open_slide(SLIDES / "dicom-camelyon") as slide:
        assert slide.geometry.vendor == "dicom" and slide.geometry.mpp == pytest.approx(28.9685)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "dicom-camelyon"])
def test_reads_past_the_slide_edge_are_glass_and_the_rest_unchanged(name):
    """A region hanging over the top-left corner: the part outside the slide is white (glass),
    the part inside equals the same pixels read wholly inside."""
    import numpy as np

    with open_slide(SLIDES / name, mpp=0.5) as slide:
        over = slide.read((-40, -24), 0, (200, 100))
        inside = slide.read((0, 0), 0, (160, 76))
    assert over.shape == (100, 200, 3) and over.dtype == np.uint8
    assert (over[:24] == 255).all() and (over[:, :40] == 255).all()
    assert np.array_equal(over[24:, 40:], inside)
