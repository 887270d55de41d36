"""``segment`` with the real engine of the bundled model on the real slides in ../shared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import shapely
import tifffile

from conftest import REPO, SLIDES, run_cli
from omniseg_rt.runtime import segment

CMU = SLIDES / "CMU-1-Small-Region.svs"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
DICOM = SLIDES / "dicom-camelyon"


def test_real_slides_outputs_and_per_slide_failures_without_torch(demo_engine, tmp_path):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(CMU.read_bytes()[: CMU.stat().st_size // 3])
    not_a_slide = tmp_path / "notes.tif"
    not_a_slide.write_text("not an image")
    out = tmp_path / "out"
    result = run_cli("segment", str(CMU), str(TCGA), str(DICOM), str(truncated), str(not_a_slide),
                     "--engine", str(demo_engine), "--out", str(out), "--tissues", "5x", block_torch=True)
    assert result.returncode == 3, result.stderr + result.stdout
    rows = {r["slide"]: r for r in _csv(out / "summary.csv")}
    assert rows["CMU-1-Small-Region"]["status"] == "done"
    assert rows["tcga-cr-7395-01a-01-ts1"]["status"] == "failed"
    assert "--mpp" in rows["tcga-cr-7395-01a-01-ts1"]["reason"]
    assert "dicom-camelyon" in rows["dicom-camelyon"]["reason"] and "29 um/px" in rows["dicom-camelyon"]["reason"]
    for name in ("truncated", "notes"):
        assert rows[name]["status"] == "failed" and name in rows[name]["reason"]

    slide_dir = out / "CMU-1-Small-Region"
    assert not (slide_dir / ".work").exists()
    with tifffile.TiffFile(slide_dir / "mask_5x.ome.tif") as tif:
        series = tif.series[0]
        masks = series.asarray()
        assert series.axes == "CYX" and len(series.levels) >= 2 and tif.pages[0].is_tiled
        assert "PhysicalSizeX=\"2.0\"" in tif.ome_metadata
    assert masks.shape[0] == 2 and set(np.unique(masks)) <= {0, 255}
    summary = json.loads((slide_dir / "summary.json").read_text())
    features = json.loads((slide_dir / "objects.geojson").read_text())["features"]
    scale = 2.0 / 0.499  # level-0 pixels per 5x pixel
    for channel, row in zip(masks, summary["tissues"]):
        mine = [f for f in features if f["properties"]["tissue"] == row["abbrev"]]
        assert len(mine) == row["objects"]
        polygons = [shapely.geometry.shape(f["geometry"]) for f in mine]
        assert all(p.is_valid for p in polygons)
        pixels = int((channel > 0).sum())
        if pixels:
            area = sum(p.area for p in polygons) / scale**2
            assert abs(area - pixels) / pixels < 0.01
        assert all(f["properties"]["classification"]["name"] == row["name"] for f in mine)
    points = np.array([p for f in features for ring in f["geometry"]["coordinates"] for p in ring])
    assert len(points) and points.min() >= 0  # polygons lie on the slide (2220 x 2967 px)
    assert points[:, 0].max() <= 2220 and points[:, 1].max() <= 2967
    manifest = json.loads((slide_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["windows"]["5x"] > 0
    assert set(manifest["seconds"]) >= {"read", "infer", "stitch", "write", "total"}


def test_slides_without_or_with_odd_pixel_size_work_with_mpp(demo_engine, tmp_path):
    [tcga] = segment(TCGA, engine=demo_engine, out=tmp_path, tissues="CAP", mpp=0.5)
    assert tcga.status == "done", tcga.reason
    assert tcga.windows["5x"] <= 9  # 4443 x 3567 px at 0.5 -> 1111 x 892 at 2 um/px: 3 x 3 cells of 384 px
    [dicom] = segment(DICOM, engine=demo_engine, out=tmp_path, tissues="CAP", mpp=2.0)
    assert dicom.status == "done", dicom.reason
    assert (tmp_path / "dicom-camelyon" / "mask_5x.ome.tif").is_file()


def test_kill_minus_9_then_resume_gives_identical_outputs(demo_engine, cmu_10x, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(CMU), "--engine", str(demo_engine), "--out", str(out), "--tissues", "10x"]
    code = "import sys; from omniseg_rt.cli import main; sys.argv = ['omniseg-rt', *sys.argv[1:]]; main()"
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "CMU-1-Small-Region" / ".work" / "journal.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "CMU-1-Small-Region" / "manifest.json").exists()
    done_before = journal.read_text().count("\n")

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock left by PID {process.pid}" in " ".join(result.stderr.split())
    resumed = out / "CMU-1-Small-Region"
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["resumed"] is True and done_before >= 1
    a, _, _ = _mask(cmu_10x / "mask_10x.ome.tif")
    b, _, _ = _mask(resumed / "mask_10x.ome.tif")
    assert np.array_equal(a, b)
    for name in ("objects.geojson", "summary.json"):
        assert (cmu_10x / name).read_bytes() == (resumed / name).read_bytes(), name


def test_blending_removes_the_window_grid_on_a_real_slide(demo_engine, cmu_10x, tmp_path):
    from omniseg_rt.metrics import seam_rates

    [crop] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="10x", blend="none")
    assert crop.status == "done", crop.reason
    blended, _, names = _mask(cmu_10x / "mask_10x.ome.tif")
    cropped, _, _ = _mask(tmp_path / "CMU-1-Small-Region" / "mask_10x.ome.tif")
    lines = range(384, max(blended.shape[1:]), 384)  # cell edges: window 512 - overlap 128
    for name, b, c in zip(names, blended, cropped):
        b_on, b_off = seam_rates(b > 0, lines)
        c_on, c_off = seam_rates(c > 0, lines)
        # measured: centre crops 9.9-23x the interior rate on these lines, blended 0.9-1.7x
        assert c_on > 5 * c_off, f"{name}: centre crops should show the grid ({c_on:.4f} vs {c_off:.4f})"
        assert b_on < 2.5 * b_off, f"{name}: blending should not ({b_on:.4f} vs {b_off:.4f})"


def test_complete_slides_are_skipped_unless_forced(demo_engine, cmu_10x, tmp_path):
    shutil.copytree(cmu_10x, tmp_path / "CMU-1-Small-Region")
    [skipped] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="10x")
    assert skipped.status == "skipped"


def test_without_engine_or_torch_the_bundled_graph_is_built_once_and_reused(tmp_path):
    env_cache = tmp_path / "cache"
    args = ["segment", str(DICOM), "--mpp", "2.0", "--tissues", "CAP", "--out", str(tmp_path / "out")]
    # a first build killed outright leaves its staging folder; the next build removes it
    code = "import sys; from omniseg_rt.cli import main; sys.argv = ['omniseg-rt', *sys.argv[1:]]; main()"
    killed = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "OMNISEG_RT_CACHE": str(env_cache)})
    deadline = time.monotonic() + 120
    while not list((env_cache / "engines").glob(".*building*")) and killed.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    [staging] = list((env_cache / "engines").glob(".*building*"))

    first = run_cli(*args, block_torch=True, env={"OMNISEG_RT_CACHE": str(env_cache)})
    assert first.returncode == 0, first.stderr
    assert not staging.exists() and "did not finish" in first.stderr
    [engine_dir] = [p for p in (env_cache / "engines").iterdir() if not p.name.startswith(".")]
    built = (engine_dir / "manifest.json").stat().st_mtime_ns
    second = run_cli(*args, "--force", block_torch=True, env={"OMNISEG_RT_CACHE": str(env_cache)})
    assert second.returncode == 0, second.stderr
    assert (engine_dir / "manifest.json").stat().st_mtime_ns == built  # reused, not rebuilt
    manifest = json.loads((tmp_path / "out" / "dicom-camelyon" / "manifest.json").read_text())
    assert manifest["windows"] == {"5x": 6}


def test_bad_arguments_fail_before_any_work(demo_engine, tmp_path):
    from omniseg_rt.errors import InvalidInputError, MissingFileError

    with pytest.raises(MissingFileError, match="no-such.svs"):
        segment(tmp_path / "no-such.svs", engine=demo_engine, out=tmp_path)
    with pytest.raises(InvalidInputError, match="overlap"):
        segment(CMU, engine=demo_engine, out=tmp_path, overlap=7)
    with pytest.raises(InvalidInputError, match="--read-with 'forks': choose threads or processes"):
        segment(CMU, engine=demo_engine, out=tmp_path, read_with="forks")
    with pytest.raises(InvalidInputError, match="--write-processes -1: must be a whole number >= 0"):
        segment(CMU, engine=demo_engine, out=tmp_path, write_processes=-1)
    with pytest.raises(InvalidInputError, match="--write-slides 0: must be a whole number >= 1"):
        segment(CMU, engine=demo_engine, out=tmp_path, write_slides=0)
    assert not (tmp_path / "CMU-1-Small-Region").exists()


def test_reading_and_tracing_processes_give_the_outputs_of_threads(demo_engine, cmu_10x, tmp_path):
    [result] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="10x", read_with="processes", readers=2,
                       write_processes=2)
    assert result.status == "done", result.reason
    a, _, _ = _mask(cmu_10x / "mask_10x.ome.tif")
    b, _, _ = _mask(tmp_path / "CMU-1-Small-Region" / "mask_10x.ome.tif")
    assert np.array_equal(a, b)
    for name in ("objects.geojson", "summary.json"):
        assert (cmu_10x / name).read_bytes() == (tmp_path / "CMU-1-Small-Region" / name).read_bytes(), name


def test_a_dying_tracing_process_fails_the_slide_and_the_rerun_only_writes(demo_engine, cmu_10x, tmp_path,
                                                                           monkeypatch):
    import importlib
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    module = importlib.import_module("omniseg_rt.runtime.segment")
    started = []

    def dying_pool(self):  # real spawned processes that exit as they start
        started.append(1)
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=os._exit,
                                   initargs=(3,))

    monkeypatch.setattr(module._TracingPool, "_start", dying_pool)
    second = tmp_path / "second.svs"
    shutil.copy(CMU, second)
    first, other = segment([CMU, second], engine=demo_engine, out=tmp_path, tissues="10x", write_processes=1)
    for result in (first, other):
        assert result.status == "failed"
        assert "polygon-tracing process died" in result.reason and "run the same command again" in result.reason
    assert len(started) == 3, "a new pool after each death"
    assert not (tmp_path / "CMU-1-Small-Region" / "manifest.json").exists()
    monkeypatch.undo()
    [again] = segment(CMU, engine=demo_engine, out=tmp_path, tissues="10x", write_processes=0)
    assert again.status == "done", again.reason
    assert again.seconds["infer"] == 0, "every band was journalled: only the writing ran"
    for name in ("objects.geojson", "summary.json"):
        assert (cmu_10x / name).read_bytes() == (tmp_path / "CMU-1-Small-Region" / name).read_bytes(), name


def _mask(path):
    from omniseg_rt.outputs import read_mask_tiff

    return read_mask_tiff(path)


def _csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
