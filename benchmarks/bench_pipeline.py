"""A lab's batch: ``segment`` of a folder of large slides vs the engine alone, per engine.

Writes ``--slides`` slides at run time from real kidney tissue (the shared patches as a mosaic in
an elliptical tissue region on white glass; JPEG tiles, a 4-level pyramid, an Aperio description
with 0.25 um/px), ``--side`` px square (default 20480 on a GPU, 6144 on a CPU), then per engine:

  - the engine alone: its runners on the first slide's windows, in segment's batches (real pixels),
    handing back what segment takes (host margins from a CPU engine, uint8 masks of the cells from
    a GPU one: ``bench_segment.engine_alone_seconds``);
  - ``segment`` of the folder, all six tissues, in a fresh process (threads or processes reading):
    windows/s end to end, the time breakdown summed over slides, peak RSS (that process and its
    reading processes), and the GPU's busy share (NVML) while it ran;
  - the ratio end to end / alone, which is the share of the time the engine is kept busy.

Engines: ``--engine DIR`` (repeatable); default on a GPU: eager and compiled torch fp16 engines of
the bundled model (batch 32); on a CPU: the default CPU engine.

    python benchmarks/bench_pipeline.py [--engine DIR ...] [--slides 3] [--side N] [--readers 8]
        [--read-with threads processes] [--before CHECKOUT]

Prints a table and writes benchmarks/results/pipeline_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from _common import PATCHES, REPO, GpuBusy, environment, slide_plans, write_result
from bench_segment import engine_alone_seconds
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.slide import open_slide

TILE, CELL, LEVELS = 512, 256, 4

RUN = """
import json, resource, sys, time
from omniseg_rt.runtime import segment
folder, engine, out, readers, read_with = sys.argv[1:6]
start = time.perf_counter()
extra = {} if read_with == "threads" else {"read_with": read_with}  # older omniseg-rt: threads only
results = segment(folder, engine=engine, out=out, readers=int(readers), **extra)
wall = time.perf_counter() - start
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"wall": wall, "peak_rss_mb": peak / 1024, "slides": [
    {"slide": r.slide, "status": r.status, "reason": r.reason, "windows": r.windows, "seconds": r.seconds}
    for r in results]}))
"""


def _patches(folders: tuple[str, ...] = ()) -> list[np.ndarray]:
    """The shared kidney patches (those of the tissue ``folders``, e.g. "0_1_dt", or all), CELL px square."""
    paths = sorted(p for p in PATCHES.rglob("im_*.png")
                   if "_mask_" not in p.name and (not folders or p.relative_to(PATCHES).parts[0] in folders))
    return [np.asarray(Image.open(p).convert("RGB").resize((CELL, CELL))) for p in paths]


def kidney_slide(path: Path, side: int, seed: int, patches: list[np.ndarray], mpp: float = 0.25) -> Path:
    """A ``side`` x ``side`` px slide at ``mpp`` um/px: real patches (flipped and rotated at random)
    in an ellipse covering about half of it, white glass around; tiles are made one at a time."""
    import tifffile

    rng = np.random.default_rng(seed)
    cells = -(-side // CELL)
    choice = rng.integers(0, len(patches), (cells, cells))
    turn = rng.integers(0, 8, (cells, cells))
    cy, cx = rng.uniform(0.4, 0.6, 2) * cells
    ry, rx = rng.uniform(0.32, 0.45, 2) * cells
    yy, xx = np.mgrid[0:cells, 0:cells]
    inside = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0

    def cell(r: int, c: int, size: int) -> np.ndarray:
        if not inside[r, c]:
            return np.full((size, size, 3), 255, np.uint8)
        patch = np.rot90(patches[choice[r, c]], turn[r, c] % 4)
        patch = patch[:, ::-1] if turn[r, c] >= 4 else patch
        return patch if size == CELL else np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size)))

    def tiles(level: int):
        down = 2 ** level
        size, per_cell = -(-side // down), CELL // down
        for ty in range(0, size, TILE):
            for tx in range(0, size, TILE):
                tile = np.full((TILE, TILE, 3), 255, np.uint8)
                for r in range(ty // per_cell, min(cells, -(-(ty + TILE) // per_cell))):
                    for c in range(tx // per_cell, min(cells, -(-(tx + TILE) // per_cell))):
                        y, x = r * per_cell - ty, c * per_cell - tx
                        part = cell(r, c, per_cell)
                        ys, xs = max(0, y), max(0, x)
                        ye, xe = min(TILE, y + per_cell), min(TILE, x + per_cell)
                        tile[ys:ye, xs:xe] = part[ys - y:ye - y, xs - x:xe - x]
                yield tile

    description = (f"Aperio Image Library v12.0.0\r\n{side}x{side} ({TILE}x{TILE}) JPEG/RGB Q=90"
                   f"|AppMag = {10 / mpp:g}|MPP = {mpp:g}")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(LEVELS):
            size = -(-side // 2 ** level)
            tif.write(tiles(level), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                      compressionargs={"level": 90}, photometric="rgb",
                      description=description if level == 0 else None, metadata=None)
    return path


def alone(engine_dir: Path, slide: Path, threads: int | None) -> tuple[int, float, int]:
    """(windows, seconds, batch) of the engine's runners alone on ``slide``'s windows."""
    with open_engine(engine_dir, threads=threads) as engine, open_slide(slide) as reader:
        plans = slide_plans(reader)
        batch = int(engine.manifest.profile.get("batch_opt", 4))
        return sum(p.windows for p in plans), engine_alone_seconds(engine, plans, reader, batch), batch


def main() -> None:
    try:
        import torch
    except ImportError:  # the serving install: CPU engines only
        torch = None
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", action="append", type=Path, default=[])
    p.add_argument("--slides", type=int, default=3)
    p.add_argument("--side", type=int)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--read-with", nargs="+", default=["threads"], choices=["threads", "processes"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--before", type=Path, help="a checkout of an older omniseg-rt: its segment runs too (threads "
                                                 "reading), side by side in this run")
    args = p.parse_args()
    gpu = torch is not None and torch.cuda.is_available()
    side = args.side or (20480 if gpu else 6144)
    threads = args.threads or None
    console = Console(width=150)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "slides"
        folder.mkdir()
        start = time.perf_counter()
        patches = _patches()
        slides = [kidney_slide(folder / f"kidney-{i}.svs", side, i, patches) for i in range(args.slides)]
        console.print(f"wrote {len(slides)} slides of {side}^2 px in {time.perf_counter() - start:.0f} s")
        engines = list(args.engine)
        if not engines and gpu:
            for mode in (None, "default"):
                engines.append(build_engine(None, backend="torch", precision="fp16", device="cuda", compile=mode,
                                            out=tmp / f"torch-fp16-{mode or 'eager'}")[0])
        elif not engines:
            engines.append(build_engine(None, out=tmp / "cpu-default", threads=threads)[0])
        for engine_dir in engines:
            windows, seconds, batch = alone(engine_dir, slides[0], threads)
            variants = [(how, None) for how in args.read_with] + ([("threads", args.before)] if args.before else [])
            for how, code in variants:
                env = {**os.environ, "PYTHONPATH": str(code.resolve())} if code else None
                with GpuBusy() as busy:
                    out = subprocess.run([sys.executable, "-c", RUN, str(folder), str(engine_dir),
                                          str(tmp / f"seg-{how}-{'before' if code else 'now'}"), str(args.readers), how],
                                         capture_output=True, text=True, cwd=code or REPO, check=True, env=env)
                run = json.loads(out.stdout.strip().splitlines()[-1])
                done = [s for s in run["slides"] if s["status"] == "done"]
                assert len(done) == len(slides), run["slides"]
                total = sum(sum(s["windows"].values()) for s in done)
                breakdown = {k: round(sum(s["seconds"].get(k, 0.0) for s in done), 2)
                             for k in ("tissue", "read", "infer", "stitch", "write")}
                rate_alone = windows / seconds
                row = {"engine": Path(engine_dir).name + (" (before)" if code else ""), "read_with": how, "readers": args.readers, "batch": batch,
                       "slides": len(done), "windows": total, "wall_s": round(run["wall"], 2),
                       "windows_per_s": round(total / run["wall"], 2), "alone_windows_per_s": round(rate_alone, 2),
                       "ratio": round(total / run["wall"] / rate_alone, 3), "seconds": breakdown,
                       "peak_rss_mb": round(run["peak_rss_mb"]), "gpu_busy": busy.fraction}
                rows.append(row)
                console.print(row)
    device = torch.cuda.get_device_name(0) if gpu else environment()["cpu"]
    table = Table(title=f"segment of {args.slides} slides of {side}^2 px at 0.25 um/px (real tissue), all six tissues, "
                        f"{device}")
    for column in ("engine", "reading", "batch", "windows", "windows/s", "alone", "ratio", "seconds t/r/i/s/w",
                   "peak RSS MB", "GPU busy"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["engine"], f"{r['readers']} {r['read_with']}", str(r["batch"]), str(r["windows"]),
                      f"{r['windows_per_s']:.1f}", f"{r['alone_windows_per_s']:.1f}", f"{r['ratio']:.2f}",
                      "/".join(f"{v:.0f}" for v in r["seconds"].values()), str(r["peak_rss_mb"]),
                      "" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}")
    console.print(table)
    path = write_result(f"pipeline_{'cuda' if gpu else 'cpu'}", {
        "environment": {**environment(), "device": device}, "side": side, "rows": rows})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
