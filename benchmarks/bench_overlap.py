"""Overlap study: each overlap setting of our plan vs a dense reference, against its cost.

The reference is the original pipeline's way: 512-px windows slid with stride 64 over the
group's canvas (about 36 windows cover each pixel), binary votes counted, foreground where more
than half of the covering windows say so. Ours: one window per cell, only its centre kept
(``overlap`` px of context shared by neighbours). Reported per setting: Dice with the reference
per tissue (glomerular unit and tuft: the tissues the demo model segments), pixel agreement,
and windows per slide. Real slides: the bundled sample (0.499 um/px) and the TCGA frozen
section (given 0.5 um/px), 5x group.

    python benchmarks/bench_overlap.py [--engine DIR] [--overlaps 0 32 64 128 192 256]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import SHARED, environment, parser, write_result
from omniseg_rt.metrics import dice
from omniseg_rt.data import SAMPLE_SLIDE
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.slide.plan import plan_group, read_window
from omniseg_rt.runtime.stitch import stitch_window
from omniseg_rt.slide import open_slide
from omniseg_rt.tissues import SCALE_GROUPS, TISSUES

GROUP = SCALE_GROUPS[0]  # 5x: CAP, TUFT
WINDOW, DENSE_STRIDE = 512, 64


def dense_reference(reader, runner, mpp: float, batch: int) -> tuple[np.ndarray, int]:
    """Vote-counted masks bool [T, H, W] of the original dense sliding windows, and their number."""
    plan = plan_group(GROUP, mpp, reader.geometry.mpp, reader.geometry.l0_size, reader.geometry.level_downsamples,
                      reader.geometry.level_for, WINDOW, 0)
    height, width = plan.canvas
    ys = sorted({*range(0, max(1, height - WINDOW + 1), DENSE_STRIDE), max(0, height - WINDOW)})
    xs = sorted({*range(0, max(1, width - WINDOW + 1), DENSE_STRIDE), max(0, width - WINDOW)})
    votes = np.zeros((len(GROUP.task_ids), height, width), np.uint16)
    cover = np.zeros((height, width), np.uint16)
    origins = [(y, x) for y in ys for x in xs]
    for i in range(0, len(origins), batch):
        chunk = origins[i:i + batch]
        specs = [plan.bands[0][0].__class__(GROUP.name, (0, 0), (int(x * plan.scale), int(y * plan.scale)),
                                            plan.bands[0][0].level, plan.bands[0][0].read_size, WINDOW,
                                            (y, min(y + WINDOW, height), x, min(x + WINDOW, width)), (0, 0))
                 for y, x in chunk]
        margins = runner.infer(np.stack([read_window(reader, s) for s in specs]))
        for (y, x), m in zip(chunk, margins):
            h, w = min(WINDOW, height - y), min(WINDOW, width - x)
            votes[:, y:y + h, x:x + w] += (m[:, :h, :w] > 0)
            cover[y:y + h, x:x + w] += 1
    return votes * 2 > cover, len(origins)


def ours(reader, runner, mpp: float, overlap: int, batch: int) -> tuple[np.ndarray, int]:
    g = reader.geometry
    plan = plan_group(GROUP, mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, WINDOW, overlap)
    canvas = np.zeros((len(GROUP.task_ids), *plan.canvas), np.uint8)
    for band in plan.bands:
        for i in range(0, len(band), batch):
            specs = band[i:i + batch]
            for spec, m in zip(specs, runner.infer(np.stack([read_window(reader, s) for s in specs]))):
                stitch_window(canvas, spec, m)
    return canvas > 0, plan.windows


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--engine", default=None)
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 32, 64, 128, 192, 256])
    args = p.parse_args()
    slides = [(SAMPLE_SLIDE, None), (SHARED / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs", 0.5)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = args.engine or build_engine(None, out=Path(tmp) / "engine", threads=args.threads)[0]
        with open_engine(engine_dir, threads=args.threads) as engine:
            runner = engine.runner(GROUP.name)
            for path, mpp in slides:
                with open_slide(path, mpp) as reader:
                    reference, dense_windows = dense_reference(reader, runner, GROUP.nominal_mpp, args.batch)
                    for overlap in args.overlaps:
                        masks, windows = ours(reader, runner, GROUP.nominal_mpp, overlap, args.batch)
                        rows.append({
                            "slide": path.name, "overlap": overlap, "windows": windows, "dense_windows": dense_windows,
                            "dice": {TISSUES[t].abbrev: round(dice(reference[i], masks[i]), 4)
                                     for i, t in enumerate(GROUP.task_ids)},
                            "agreement": float((reference == masks).mean()),
                        })
    table = Table(title=f"overlap vs dense reference ({GROUP.name} group, window {WINDOW}, dense stride {DENSE_STRIDE})")
    for column in ("slide", "overlap", "windows", "dense windows", "Dice CAP", "Dice TUFT", "pixel agreement"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["slide"], str(r["overlap"]), str(r["windows"]), str(r["dense_windows"]), f"{r['dice']['CAP']:.4f}",
                      f"{r['dice']['TUFT']:.4f}", f"{r['agreement']:.5f}")
    Console().print(table)
    print(f"wrote {write_result('overlap', {'environment': environment(), 'rows': rows})}")


if __name__ == "__main__":
    main()
