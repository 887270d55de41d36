"""Helpers shared by the benchmark scripts: real windows, timing, environment, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OMNISEG_SHARED", REPO.parent / "shared"))
PATCHES = SHARED / "data" / "kidney_patches"
RESULTS = REPO / "benchmarks" / "results"


def real_windows(count: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """``count`` windows of real kidney tissue: uint8 [count, 3, size, size].

    Each window is a mosaic of 256x256 real patches (the shared data has no larger images),
    drawn without replacement from all tissue folders with a fixed seed.
    """
    paths = sorted(p for p in PATCHES.rglob("im_*.png") if "_mask_" not in p.name)
    rng = np.random.default_rng(seed)
    per_side = -(-size // 256)
    need = count * per_side * per_side
    picks = rng.choice(len(paths), size=need, replace=need > len(paths))
    tiles = [np.asarray(Image.open(paths[i]).convert("RGB")) for i in picks]
    windows = []
    for w in range(count):
        own = tiles[w * per_side * per_side:(w + 1) * per_side * per_side]
        rows = [np.concatenate(own[r * per_side:(r + 1) * per_side], axis=1) for r in range(per_side)]
        windows.append(np.concatenate(rows, axis=0)[:size, :size].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(windows))


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``fn`` (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def round_robin_seconds(runs: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall times of each of ``runs``, called once each per round for ``repeats`` rounds after one
    warm-up round: drift on a shared machine falls on every variant alike."""
    for run in runs:
        run()
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, times in zip(runs, samples):
            times.append(median_seconds(run, 1)[0])
    return samples


def slide_plans(reader, window: int = 512, overlap: int = 128) -> list:
    """The plan of every scale group of an open slide, on its detected tissue, as ``segment``
    makes them by default (its groups' nominal pixel sizes)."""
    from omniseg_rt.slide import detect_tissue
    from omniseg_rt.slide.plan import plan_group
    from omniseg_rt.slide.tissue import TISSUE_MPP
    from omniseg_rt.tissues import SCALE_GROUPS

    g = reader.geometry
    tissue = detect_tissue(reader.thumbnail(TISSUE_MPP), TISSUE_MPP)
    return [plan_group(group, group.nominal_mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, window,
                       overlap, tissue, TISSUE_MPP) for group in SCALE_GROUPS]


class GpuBusy:
    """Share of the time the GPU ran a kernel while the ``with`` block ran: NVML's utilisation
    (through ``torch.cuda.utilization``, which needs no CUDA context) sampled every ``every``
    seconds; ``fraction`` is None without a GPU or NVML."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.samples, self.fraction = every, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import torch

        while not self._stop.wait(self.every):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self) -> GpuBusy:
        try:
            import torch

            torch.cuda.utilization()
        except Exception:  # no torch, no GPU or no NVML: nothing to sample
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.fraction = round(statistics.fmean(self.samples) / 100, 3) if self.samples else None


def environment() -> dict:
    """Python, machine, CPU name, cores and the vector extensions that decide CPU speed."""
    from omniseg_rt.hardware import cpu_summary

    cpu = cpu_summary()
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu": cpu["name"], "cpu_flags": cpu["flags"]}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def parser(doc: str, threads: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: checkpoint, batch, window, repeats, threads."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--checkpoint", default=str(SHARED / "conformance" / "upstream_midl_seed0.pth"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=threads)
    return p
