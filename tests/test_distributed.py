"""``segment --ray``: a local Ray cluster of 2 CPUs gives the local run's outputs, also when a
worker is killed in the middle of a slide; without ray, a clear error before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import SLIDES, run_cli

pytest.importorskip("ray", reason="the ray extra is not installed")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SLIDE_SET = [SLIDES / "CMU-1-Small-Region.svs", SLIDES / "tcga-cr-7395-01a-01-ts1.svs"]
OPTIONS = {"tissues": "5x", "mpp": 0.5}


@pytest.fixture(scope="module")
def local_outputs(demo_engine, tmp_path_factory):
    from omniseg_rt.runtime import segment

    out = tmp_path_factory.mktemp("local")
    assert [r.status for r in segment(SLIDE_SET, engine=demo_engine, out=out, **OPTIONS)] == ["done", "done"]
    return out


def _same_outputs(a, b):
    from omniseg_rt.outputs import read_mask_tiff

    for slide in ("CMU-1-Small-Region", "tcga-cr-7395-01a-01-ts1"):
        assert np.array_equal(read_mask_tiff(a / slide / "mask_5x.ome.tif")[0],
                              read_mask_tiff(b / slide / "mask_5x.ome.tif")[0])
        for name in ("objects.geojson", "summary.json"):
            assert (a / slide / name).read_bytes() == (b / slide / name).read_bytes(), (slide, name)


def test_local_cluster_gives_the_local_outputs_even_when_a_worker_dies(demo_engine, local_outputs, tmp_path):
    from omniseg_rt.distributed import segment_on_ray

    out = tmp_path / "ray"
    killed = []

    def kill_a_worker_mid_slide():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if any(out.glob("*/.work/journal.jsonl")):
                pids = subprocess.run(["pgrep", "-f", "ray::SlideWorker"], capture_output=True, text=True).stdout.split()
                if pids:
                    os.kill(int(pids[0]), signal.SIGKILL)
                    killed.append(int(pids[0]))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_mid_slide, daemon=True)
    killer.start()
    events = []
    results = segment_on_ray(SLIDE_SET, "local", engine=demo_engine, out=out, num_cpus=2, worker_cpus=1,
                             on_progress=events.append, **OPTIONS)
    killer.join(timeout=1)
    assert killed, "no worker was killed: the test did not test fault tolerance"
    assert [r.status for r in results] == ["done", "done"], [r.reason for r in results]
    assert sum(e.get("retries", 0) for e in events if e["event"] == "slide_done") >= 1
    _same_outputs(local_outputs, out)
    assert (out / "summary.csv").read_text().count("\n") == 3


def test_without_ray_a_clear_error_before_any_work(demo_engine, tmp_path):
    result = run_cli("segment", str(SLIDE_SET[0]), "--engine", str(demo_engine), "--out", str(tmp_path / "out"),
                     "--ray", "local", block=("ray",))
    assert result.returncode == 1
    assert "pip install 'omniseg-rt[ray]'" in result.stderr
    assert not (tmp_path / "out" / "CMU-1-Small-Region").exists()
