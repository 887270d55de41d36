"""Blended stitching (runtime/stitch.py), pure numpy: windows cut from a known image, engines
whose margins are a known function of the pixels, with and without a per-window offset."""

from __future__ import annotations

import numpy as np
import pytest

from omniseg_rt.metrics import seam_rates
from omniseg_rt.runtime.stitch import Blender, importance_map, stitch_window
from omniseg_rt.slide.plan import plan_group
from omniseg_rt.tissues import SCALE_GROUPS

WINDOW, OVERLAP = 64, 16  # the default's proportions (512, 128)


def _plan(height: int, width: int, tissue: np.ndarray | None = None):
    return plan_group(SCALE_GROUPS[1], 1.0, 1.0, (width, height), (1.0,), lambda mpp: 0, WINDOW, OVERLAP,
                      tissue=tissue, tissue_mpp=1.0 if tissue is not None else None)


def _cut(image: np.ndarray, spec) -> np.ndarray:
    """float [window, window] of ``image`` under ``spec`` (0 beyond the image)."""
    x, y = spec.l0_xy
    pad = WINDOW
    padded = np.pad(image, pad)
    return padded[y + pad:y + pad + WINDOW, x + pad:x + pad + WINDOW]


def _stitch(plan, margins_of, blend: bool, order: np.ndarray | None = None) -> np.ndarray:
    specs = [s for band in plan.bands for s in band]
    if order is not None:
        specs = [specs[i] for i in order]
    canvas = np.zeros((1, *plan.canvas), np.uint8)
    if not blend:
        for spec in specs:
            stitch_window(canvas, spec, margins_of(spec)[None])
        return canvas[0]
    blender = Blender(plan, 1, range(len(plan.bands)))
    for spec in specs:
        blender.add(spec, margins_of(spec)[None])
    for band in range(len(plan.bands)):
        blender.finish(canvas, band)
    assert not blender.sums, "every accumulator is freed when its band finishes"
    return canvas[0]


def _smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.sin(x / 23.0) + np.cos(y / 31.0) + 0.3 * np.sin((x + y) / 11.0)


def test_importance_map_is_a_positive_gaussian_peaking_at_the_centre():
    weights = importance_map(64)
    assert weights.shape == (64, 64) and weights.dtype == np.float32
    assert (weights > 0).all() and weights.max() == pytest.approx(1.0, abs=0.01)
    assert np.array_equal(weights, weights.T) and np.array_equal(weights, weights[::-1, ::-1])
    assert weights[32, 32] > weights[32, 48] > weights[32, 63]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blending_a_window_independent_function_gives_the_function_in_any_order(seed):
    image = _smooth(150, 220)
    image = np.where(np.abs(image) < 0.05, 0.05, image)  # no pixel within rounding of the threshold
    plan = _plan(*image.shape)
    order = np.random.default_rng(seed).permutation(plan.windows)
    got = _stitch(plan, lambda s: _cut(image, s), blend=True, order=order)
    assert np.array_equal(got == 255, image > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blending_makes_a_per_window_offset_seamless(seed):
    image = _smooth(300, 400)
    plan = _plan(*image.shape)
    offsets = np.random.default_rng(seed).uniform(-0.2, 0.2, plan.windows)
    index = {s.t_rc: i for i, s in enumerate(s for band in plan.bands for s in band)}

    def margins(spec):  # each window sees the function shifted by its own offset (like per-window statistics)
        return _cut(image, spec) + offsets[index[spec.t_rc]]

    stride = WINDOW - OVERLAP
    lines = range(stride, 400, stride)
    crop = seam_rates(_stitch(plan, margins, blend=False) > 0, lines)
    blended = seam_rates(_stitch(plan, margins, blend=True) > 0, lines)
    assert crop[0] > 3 * crop[1], f"centre crops should show the window grid: {crop}"
    assert blended[0] <= 1.5 * blended[1], f"blending should leave no seams: {blended}"


def test_cells_without_tissue_stay_empty_and_get_no_accumulator():
    image = _smooth(150, 220) + 5  # foreground everywhere
    side = WINDOW - OVERLAP
    tissue = np.zeros(image.shape, bool)
    tissue[:side, :side] = True  # only cell (0, 0)
    plan = _plan(*image.shape, tissue=tissue)
    assert [s.t_rc for band in plan.bands for s in band] == [(0, 0)]
    got = _stitch(plan, lambda s: _cut(image, s), blend=True)
    assert (got[:side, :side] == 255).all() and (got[:, side:] == 0).all() and (got[side:] == 0).all()


def test_a_band_needs_its_neighbours_windows():
    plan = _plan(300, 400)
    blender = Blender(plan, 1, [3])
    assert blender.reach == 1
    assert blender.bands_needed([3]) == [2, 3, 4]
    assert blender.bands_needed([0, len(plan.bands) - 1]) == [0, 1, len(plan.bands) - 2, len(plan.bands) - 1]


def test_seam_rates_count_pairs_across_the_lines():
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True  # one vertical edge, at column 4
    on, off = seam_rates(mask, [4])
    assert on == pytest.approx(8 / 16)  # 8 horizontal pairs across the line differ, 8 vertical do not
    assert off == 0.0
    on, off = seam_rates(mask, [2])
    assert on == 0.0 and off == pytest.approx(8 / (2 * 7 * 8 - 16))


@pytest.mark.parametrize("invariant", [False, True])
def test_a_blended_group_resumed_after_its_first_band_gives_the_same_bytes(tmp_path, invariant):
    """The pipeline's resume path: bands journalled by a first run are not redone, the band before
    the first open one runs again (its contributions were in memory), and the canvas comes out
    byte-identical to one uninterrupted run, with a window-dependent engine. A batch-invariant
    engine gets full batches across bands (and the same bytes)."""
    from omniseg_rt.engines.base import GraphRunner, GraphSpec
    from omniseg_rt.runtime.pipeline import _run_group
    from omniseg_rt.runtime.settings import SegmentSettings
    from omniseg_rt.runtime.store import WorkStore
    from omniseg_rt.slide import open_slide
    from synthetic import tissue_pattern, write_aperio

    class CentredRed(GraphRunner):
        """margin = red - the window's mean red: depends on the window, as the network does."""

        def __init__(self) -> None:
            self.spec = GraphSpec("10x", (0,), "10x", 1.0, "-")
            self.batch_invariant = invariant
            self.windows, self.batches = 0, []

        def infer(self, images: np.ndarray) -> np.ndarray:
            self.windows += len(images)
            self.batches.append(len(images))
            red = images[:, :1].astype(np.float32)
            return red - red.mean(axis=(2, 3), keepdims=True)

    slide = write_aperio(tmp_path / "s.svs", tissue_pattern(400, 300, glass_from=1.0), mpp=1.0, levels=1)
    settings = SegmentSettings(tissues=(0,), window=64, overlap=16, batch=3)
    with open_slide(slide) as reader:
        g = reader.geometry
        plan = plan_group(SCALE_GROUPS[1], 1.0, g.mpp, g.l0_size, g.level_downsamples, g.level_for, 64, 16)
        bands = list(range(len(plan.bands)))
        canvases = {}
        for name, runs in (("once", [bands]), ("resumed", [bands[:2], bands[2:]])):
            store = WorkStore(tmp_path / name, {"k": name})
            canvas = store.canvas("10x", (1, *plan.canvas))
            runner = CentredRed()
            for todo in runs:
                _run_group(plan, todo, reader, runner, [0], canvas, None, store, settings,
                           {"read": 0.0, "infer": 0.0, "stitch": 0.0}, lambda n: None)
            assert store.done_bands("10x") == set(bands)
            canvases[name] = (np.array(canvas), runner.windows)
            partial = sum(size != settings.batch for size in runner.batches)  # bands hold 7 windows
            assert partial <= len(runs) if invariant else partial > len(runs), runner.batches
    (once, windows_once), (resumed, windows_resumed) = canvases["once"], canvases["resumed"]
    assert once.any() and np.array_equal(once, resumed)
    # the first run journalled bands 0 and 1 (running band 2's windows to finish band 1); the
    # second runs band 1 again (band 2 needs its contributions) and band 2, whose sums were lost
    assert windows_resumed == windows_once + len(plan.bands[1]) + len(plan.bands[2])
