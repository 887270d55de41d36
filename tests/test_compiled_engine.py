"""The torch engine: compiled with inductor (its C++ backend on this CPU), and outputs that stay
where the network ran so that only uint8 masks cross to the host (engines/arrays.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from conftest import SLIDES, real_patches
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.engines.arrays import HOST
from omniseg_rt.engines.torch_backend import TorchArrays
from omniseg_rt.errors import InvalidInputError
from omniseg_rt.runtime.stitch import Blender, stitch_windows
from omniseg_rt.slide.plan import plan_group
from omniseg_rt.tissues import SCALE_GROUPS

WINDOW = 64  # small windows: compiling the whole network on 2 cores takes about half a minute


def windows_uint8(n: int) -> np.ndarray:
    """``n`` real kidney windows of WINDOW px (uint8 [n, 3, WINDOW, WINDOW])."""
    return (real_patches(n)[:, :, 96:96 + WINDOW, 96:96 + WINDOW] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """The bundled model as a compiled and an eager torch fp32 engine (all six tissues, one graph)."""
    root = tmp_path_factory.mktemp("torch-engines")
    compiled, _ = build_engine(None, backend="torch", precision="fp32", device="cpu", tissues="all", window=WINDOW,
                               compile="default", out=root / "compiled")
    eager, _ = build_engine(None, backend="torch", precision="fp32", device="cpu", tissues="all", window=WINDOW,
                            out=root / "eager")
    return compiled, eager


def test_compiled_engine_matches_eager_pads_short_batches_and_is_gated(engines):
    compiled, eager = engines
    images = windows_uint8(6)  # the compiled batch is 4: one full batch and a padded one of 2
    with open_engine(compiled) as engine, open_engine(eager) as reference:
        assert engine.manifest.compiled["mode"] == "default" and engine.manifest.compiled["batch"] == 4
        assert engine.manifest.accuracy_gate["passed"], "a compiled engine is gated against fp32"
        got, want = engine.infer(images), reference.infer(images)
        single = engine.infer(images[5:6])
        shuffled = engine.infer(images[[2, 0, 5, 1]])
        assert engine.runners[0].batch_invariant
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert ((got > 0) == (want > 0)).mean() > 0.9995
    # what lets the slide pipeline batch across bands with this engine and still resume to the same bytes
    np.testing.assert_array_equal(single[0], got[5], err_msg="a window's result depends on its batch")
    np.testing.assert_array_equal(shuffled[2], got[5], err_msg="a window's result depends on its batch")
    np.testing.assert_array_equal(shuffled[0], got[2], err_msg="a window's result depends on its batch")
    assert any((compiled / "cache" / "inductor").rglob("*")), "the compiled kernels live in the engine"


def test_a_second_open_loads_the_kernels_from_the_engine_and_compiles_nothing(engines, tmp_path):
    compiled, _ = engines
    script = ("import json, sys; from torch._dynamo.utils import counters; from omniseg_rt.engines import open_engine\n"
              "open_engine(sys.argv[1]).close(); print(json.dumps(dict(counters['inductor'])))")
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "elsewhere"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script, str(compiled)], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts.get("fxgraph_cache_hit", 0) >= 1 and counts.get("fxgraph_cache_miss", 0) == 0, counts
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").rglob("*.so"))


def test_a_compiled_engine_from_another_torch_says_how_to_rebuild(engines, tmp_path):
    compiled, _ = engines
    copy = shutil.copytree(compiled, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["compiled"]["torch"] = "1.0.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match=r"torch 1\.0\.0 .*rebuild it here with: omniseg-rt build .*--compile default"):
        open_engine(copy)


def test_compile_is_checked_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="--backend torch"):
        build_engine(None, backend="onnxruntime", compile="default", out=tmp_path / "x")
    with pytest.raises(InvalidInputError, match="choose default or max-autotune"):
        build_engine(None, backend="torch", device="cpu", precision="fp32", compile="fast", out=tmp_path / "y")
    assert not list(tmp_path.iterdir())


def _plan():
    return plan_group(SCALE_GROUPS[1], 1.0, 1.0, (150, 170), (1.0,), lambda mpp: 0, WINDOW, 16)


def test_device_arrays_stitch_exactly_like_the_host():
    """The same margins stitched as numpy arrays and as torch tensors: identical masks (centre
    crops and blended), scores within 1 (sigmoid differs in the last bit between libraries)."""
    plan = _plan()
    specs = [s for band in plan.bands for s in band]
    rng = np.random.default_rng(0)
    margins = rng.normal(0, 2, (len(specs), 3, WINDOW, WINDOW)).astype(np.float32)
    device = TorchArrays(torch, "cpu")
    results = []
    for arrays, outputs in ((HOST, margins), (device, torch.from_numpy(margins))):
        crop = np.zeros((2, *plan.canvas), np.uint8)
        crop_scores = np.zeros_like(crop)
        stitch_windows(crop, specs, outputs, [2, 0], crop_scores, arrays)
        blend = np.zeros_like(crop)
        blend_scores = np.zeros_like(crop)
        blender = Blender(plan, 2, range(len(plan.bands)), keep_weights=True, arrays=arrays)
        for spec, window in zip(specs, outputs):
            blender.add(spec, window[[2, 0]])
        for band in range(len(plan.bands)):
            blender.finish(blend, band, blend_scores)
        results.append((crop, crop_scores, blend, blend_scores))
    (crop, crop_scores, blend, blend_scores), (crop_d, crop_scores_d, blend_d, blend_scores_d) = results
    np.testing.assert_array_equal(crop_d, crop)
    np.testing.assert_array_equal(blend_d, blend)
    assert crop.any() and blend.any() and (crop != blend).any()
    for host, dev in ((crop_scores, crop_scores_d), (blend_scores, blend_scores_d)):
        assert np.abs(host.astype(int) - dev).max() <= 1 and (host == dev).mean() > 0.999


def test_every_backend_hands_out_masks_equal_to_its_thresholded_margins(engines, demo_engine):
    images = windows_uint8(3)
    _, eager = engines
    for path in (eager, demo_engine):
        with open_engine(path) as engine:
            for runner in engine.runners:
                outputs = runner.submit_device(images).result()
                masks = runner.arrays.masks([outputs[i] for i in range(len(images))])
                np.testing.assert_array_equal(np.stack(masks), np.where(runner.infer(images) > 0, 255, 0))


def test_a_slide_stitched_on_the_device_gives_the_host_path_bytes(tmp_path):
    """The CMU slide's 10x group through the torch engine, blended on its (CPU) device and
    shipping uint8 masks, then with the runner's outputs brought to the host first: same outputs."""
    from omniseg_rt.runtime.pipeline import run_slide
    from omniseg_rt.runtime.segment import make_settings

    path, _ = build_engine(None, backend="torch", precision="fp32", device="cpu", tissues="10x",
                           out=tmp_path / "engine")
    slide = SLIDES / "CMU-1-Small-Region.svs"
    with open_engine(path) as engine:
        settings = make_settings(engine.manifest, tissues="10x")
        assert isinstance(engine.runners[0].arrays, TorchArrays)
        device = run_slide(slide, engine, tmp_path / "device", settings, lambda event: None)
        for runner in engine.runners:  # the host path: margins to numpy, stitched there
            runner.arrays, runner.submit_device = HOST, (lambda images, size=None, r=runner: r.submit(images))
        host = run_slide(slide, engine, tmp_path / "host", settings, lambda event: None)
    assert device.status == host.status == "done"
    names = [name for name in device.outputs.values() if name != "manifest.json"]
    assert any(name.startswith("mask_") for name in names)
    for name in names:  # TIFFs: every page's pixels (OME-XML carries a fresh UUID); the rest: bytes
        a, b = (tmp_path / side / "CMU-1-Small-Region" / name for side in ("device", "host"))
        if name.endswith(".tif"):
            with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
                assert len(ta.pages) == len(tb.pages)
                for pa, pb in zip(ta.pages, tb.pages):
                    np.testing.assert_array_equal(pa.asarray(), pb.asarray(), err_msg=name)
        else:
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize("name,mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5),
                                      ("dicom-camelyon", None)])
def test_windows_resized_on_the_device_match_the_reading_resize(name, mpp):
    """Windows read at their pyramid level and resized by the torch runner (what a GPU engine
    does) equal the reading path's PIL resize within one grey level, on every group of the real
    slides (upsampled, downsampled, as read)."""
    from omniseg_rt.engines.torch_backend import resize_windows
    from omniseg_rt.slide import detect_tissue, open_slide
    from omniseg_rt.slide.plan import read_window
    from omniseg_rt.slide.tissue import TISSUE_MPP

    with open_slide(SLIDES / name, mpp) as reader:
        g = reader.geometry
        tissue_mpp = max(TISSUE_MPP, g.mpp)
        tissue = detect_tissue(reader.thumbnail(tissue_mpp), tissue_mpp)
        for group in SCALE_GROUPS:
            plan = plan_group(group, group.nominal_mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, 512, 128,
                              tissue, tissue_mpp)
            specs = [s for band in plan.bands for s in band][:6]
            host = np.stack([read_window(reader, s) for s in specs]).astype(np.int16)
            raw = np.stack([read_window(reader, s, resize=False) for s in specs])
            assert raw.shape[2:] == specs[0].read_size[::-1]
            device = resize_windows(torch, torch.from_numpy(raw), 512).numpy().astype(np.int16)
            difference = np.abs(host - device)
            assert difference.max() <= 1 and difference.mean() < 0.2, (group.name, raw.shape)


def test_a_slide_fed_unresized_windows_gives_nearly_the_same_masks(tmp_path):
    """The pipeline hands a resizing runner windows as read (the CMU slide's 10x group: 1027 px
    at its only level) and the size to make them; the masks agree with the host-resized run to a
    Dice of 0.99 (inputs differ by at most one grey level)."""
    from omniseg_rt.runtime.pipeline import run_slide
    from omniseg_rt.runtime.segment import make_settings

    path, _ = build_engine(None, backend="torch", precision="fp32", device="cpu", tissues="10x",
                           out=tmp_path / "engine")
    slide = SLIDES / "CMU-1-Small-Region.svs"
    seen = []
    with open_engine(path) as engine:
        settings = make_settings(engine.manifest, tissues="10x")
        [runner] = engine.runners
        host = run_slide(slide, engine, tmp_path / "host", settings, lambda event: None)
        submit = runner.submit_device

        def spy(images, size=None):
            seen.append((images.shape[2:], size))
            return submit(images, size)

        runner.resizes, runner.submit_device = True, spy
        device = run_slide(slide, engine, tmp_path / "device", settings, lambda event: None)
    assert host.status == device.status == "done"
    assert seen and all(shape == (1027, 1027) and size == 512 for shape, size in seen)
    with tifffile.TiffFile(tmp_path / "host" / "CMU-1-Small-Region" / "mask_10x.ome.tif") as a, \
            tifffile.TiffFile(tmp_path / "device" / "CMU-1-Small-Region" / "mask_10x.ome.tif") as b:
        masks_host, masks_device = a.series[0].asarray() > 0, b.series[0].asarray() > 0
    for h, d in zip(masks_host, masks_device):
        assert h.any()
        assert 2 * np.count_nonzero(h & d) / (np.count_nonzero(h) + np.count_nonzero(d)) >= 0.99
