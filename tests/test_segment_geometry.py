"""Window plan and stitching, exact, on synthetic slides with an engine whose output is a known
function of the pixels (red channel above 127 -> foreground), so every canvas pixel is checkable."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile

from omniseg_rt.engines.base import Engine, GraphRunner, GraphSpec
from omniseg_rt.runtime import segment
from omniseg_rt.slide.plan import plan_group
from omniseg_rt.tissues import SCALE_GROUPS
from synthetic import tissue_pattern, write_aperio


class RedRunner(GraphRunner):
    """margin = red - 127.5 for every tissue of the graph: uint8 [B,3,H,W] -> float32 [B,T,H,W]."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.calls: list[int] = []

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        margin = images[:, :1].astype(np.float32) - 127.5
        return np.repeat(margin, len(self.spec.tissues), axis=1)


def red_engine(path) -> Engine:
    runners = [RedRunner(GraphSpec(g.name, g.task_ids, g.name, g.nominal_mpp, "-")) for g in SCALE_GROUPS]
    from omniseg_rt.engines.manifest import EngineManifest

    manifest = EngineManifest(backend="test", precision="fp32", graphs=[], window=64, source={}, family=None,
                              profile={}, settings={}, built_on={}, versions={}, rebuild={})
    return Engine(path, manifest, runners)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "synthetic.svs"
    return write_aperio(path, tissue_pattern(600, 800, glass_from=0.6))


def _level(slide_path, level):
    with openslide.OpenSlide(str(slide_path)) as s:
        return np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]).convert("RGB"))


@pytest.mark.parametrize("group_mpp, level, blend, batch", [(0.5, 0, "gaussian", 4), (1.0, 1, "gaussian", 1),
                                                       (1.0, 1, "gaussian", 3), (1.0, 1, "none", 4)])
def test_stitched_masks_equal_the_known_function_of_the_pixels(slide, tmp_path, group_mpp, level, blend, batch):
    engine = red_engine(tmp_path / "engine")
    [result] = segment(slide, engine=engine, out=tmp_path / "out", window=64, overlap=16, blend=blend, batch=batch,
                       group_mpp={g.name: group_mpp for g in SCALE_GROUPS})
    assert result.status == "done", result.reason
    expected = _level(slide, level)[..., 0] > 127
    with tifffile.TiffFile(tmp_path / "out" / "synthetic" / "mask_10x.ome.tif") as tif:
        masks = tif.series[0].asarray()
    assert masks.shape[0] == 3 and masks.shape[1:] == expected.shape
    left = int(expected.shape[1] * 0.55)  # all tissue left of the glass strip: every cell inferred
    for channel in masks:
        assert np.array_equal(channel[:, :left] == 255, expected[:, :left])
    manifest = json.loads((tmp_path / "out" / "synthetic" / "manifest.json").read_text())
    group = next(g for g in manifest["groups"] if g["group"] == "10x")
    assert group["windows"] < group["cells"], "cells on glass only must not be inferred"
    # batches never straddle bands and hold at most --batch windows
    assert all(n <= batch for r in engine.runners for n in r.calls)
    assert manifest["request"]["blend"] == blend


def test_plan_cells_partition_the_canvas():
    group = SCALE_GROUPS[1]
    plan = plan_group(group, 1.0, 0.25, (1000, 700), (1.0, 4.0), lambda mpp: 1, window=64, overlap=16)
    cover = np.zeros(plan.canvas, np.int32)
    for band in plan.bands:
        for spec in band:
            y0, y1, x0, x1 = spec.cell
            cover[y0:y1, x0:x1] += 1
            assert spec.read_size == (64, 64)  # level 1 is exactly the group's pixel size
            assert spec.l0_xy == ((x0 - 8) * 4, (y0 - 8) * 4)
    assert plan.canvas == (175, 250)
    assert (cover == 1).all()
    assert plan.windows == plan.cells_total


def test_plan_skips_cells_without_tissue():
    group = SCALE_GROUPS[0]
    tissue = np.zeros((10, 10), bool)
    tissue[0:2, 0:2] = True  # top-left corner only (tissue mask at 8 um/px)
    plan = plan_group(group, 2.0, 0.5, (320, 320), (1.0,), lambda mpp: 0, window=32, overlap=0,
                      tissue=tissue, tissue_mpp=8.0)
    # canvas 80x80 at 2 um/px; tissue covers canvas 0..8 -> only cell (0, 0)
    assert [s.t_rc for b in plan.bands for s in b] == [(0, 0)]
    assert plan.cells_total == 9


def test_plain_images_are_one_level_slides(tmp_path):
    from PIL import Image

    rgb = tissue_pattern(300, 400, glass_from=0.9)
    Image.fromarray(rgb).save(tmp_path / "scan.png")
    Image.fromarray(rgb).save(tmp_path / "tagged.tif", dpi=(25400 / 0.5, 25400 / 0.5))  # 0.5 um/px
    engine = red_engine(tmp_path / "engine")
    options = dict(engine=engine, window=64, overlap=16, tissues="10x", group_mpp={"10x": 0.5})
    [no_mpp, tagged] = segment([tmp_path / "scan.png", tmp_path / "tagged.tif"], out=tmp_path / "a", **options)
    assert no_mpp.status == "failed" and "scan" in no_mpp.reason and "--mpp" in no_mpp.reason
    assert tagged.status == "done", tagged.reason
    manifest = json.loads((tmp_path / "a" / "tagged" / "manifest.json").read_text())
    assert manifest["geometry"]["mpp"] == pytest.approx(0.5) and manifest["geometry"]["mpp_source"] == "TIFF resolution tags"
    [given] = segment(tmp_path / "scan.png", out=tmp_path / "b", mpp=0.5, **options)
    assert given.status == "done", given.reason
    with tifffile.TiffFile(tmp_path / "b" / "scan" / "mask_10x.ome.tif") as tif:
        mask = tif.series[0].asarray()[0]
    left = int(400 * 0.85)
    assert np.array_equal(mask[:, :left] == 255, rgb[:, :left, 0] > 127)
