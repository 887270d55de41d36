"""Overlap and blending study: each stitching setting vs a dense reference, seams, and cost.

The reference is the original pipeline's way: 512-px windows slid with stride 64 over the
group's canvas (up to 64 windows cover each pixel), each origin jittered by up to 63 px (so the
reference's own window edges do not line up with ours), binary votes counted, foreground where
more than half of the covering windows say so. Ours, per overlap: one window per cell of
``window - overlap`` px, combined either as centre crops (each window keeps its cell) or blended
(Gaussian importance map of sigma = fraction x window, weighted mean margin > 0). Reported per
setting and per slide/scale group: Dice with the reference per tissue, the seam ratio (rate at
which adjacent pixels disagree across window-grid lines, over the rate elsewhere; at cell edges
and at window edges; the reference's own ratio on the same lines is the floor these slides
allow), and windows per slide against today's default (centre crops, overlap 128). Real slides: the bundled
sample (0.499 um/px) and the TCGA frozen section (given 0.5 um/px), 5x and 10x groups, and a
768-px square of the sample at 40x (the dense reference of a whole slide at 40x is thousands of
windows on a CPU). Neither is kidney, so the kidney heads see tissue they were not trained for
there; the kidney cases are slides written at run time from the shared kidney patches of each
group's tissues at the group's own pixel size (``bench_pipeline.kidney_slide``: 2048^2 px, a
mosaic of real patches in an ellipse on glass). Summaries are per set of cases.

    python benchmarks/bench_overlap.py [--engine DIR | --checkpoint CKPT] [--overlaps 0 128 192 240] [--sigmas 0.125 0.25]
        [--cases slides kidney] [--ceiling]
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import SHARED, environment, parser, write_result
from omniseg_rt.data import SAMPLE_SLIDE
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.metrics import dice, seam_rates
from omniseg_rt.runtime.settings import DEFAULT_OVERLAP
from omniseg_rt.runtime.stitch import Blender, stitch_window
from omniseg_rt.slide import open_slide
from omniseg_rt.slide.plan import WindowSpec, plan_group, read_window
from omniseg_rt.tissues import SCALE_GROUPS, TISSUES, scale_group

WINDOW, DENSE_STRIDE = 512, 64
TCGA = SHARED / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
# (slide, level-0 mpp override, scale group, level-0 region (x, y, w, h) or None for the whole slide)
CASES = [(SAMPLE_SLIDE, None, "5x", None), (SAMPLE_SLIDE, None, "10x", None), (TCGA, 0.5, "5x", None),
         (TCGA, 0.5, "10x", None), (SAMPLE_SLIDE, None, "40x", (700, 700, 768, 768))]
KIDNEY_SIDE = 2048


def kidney_cases(folder: Path) -> list:
    """One slide per scale group from the shared kidney patches of its tissues, at its pixel size."""
    from bench_pipeline import _patches, kidney_slide

    return [(kidney_slide(folder / f"kidney-{g.name}.svs", KIDNEY_SIDE, 0,
                          _patches(tuple(TISSUES[t].folder for t in g.task_ids)), g.nominal_mpp), None, g.name, None)
            for g in SCALE_GROUPS]


class Region:
    """A slide reader seen through a level-0 region: reads are shifted by its origin."""

    def __init__(self, reader, origin: tuple[int, int]) -> None:
        self.reader, self.origin = reader, origin

    def read_image(self, l0_xy, level, size):
        return self.reader.read_image((l0_xy[0] + self.origin[0], l0_xy[1] + self.origin[1]), level, size)


def plan_for(reader, group, region, overlap: int):
    g = reader.geometry
    size = g.l0_size if region is None else region[2:]
    return plan_group(group, group.nominal_mpp, g.mpp, size, g.level_downsamples, g.level_for, WINDOW, overlap)


def infer(source, runner, specs: list[WindowSpec], batch: int) -> list[np.ndarray]:
    out = []
    for i in range(0, len(specs), batch):
        chunk = specs[i:i + batch]
        out.extend(runner.infer(np.stack([read_window(source, s) for s in chunk])))
    return out


def dense_reference(source, runner, plan, batch: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Vote-counted masks bool [T, H, W] of the original dense sliding windows (jitter drawn with
    ``seed``), and their number."""
    height, width = plan.canvas
    ys = sorted({*range(0, max(1, height - WINDOW + 1), DENSE_STRIDE), max(0, height - WINDOW)})
    xs = sorted({*range(0, max(1, width - WINDOW + 1), DENSE_STRIDE), max(0, width - WINDOW)})
    rng = np.random.default_rng(seed)
    origins = [(min(y + int(rng.integers(DENSE_STRIDE)), max(0, height - WINDOW)),
                min(x + int(rng.integers(DENSE_STRIDE)), max(0, width - WINDOW))) for y in ys for x in xs]
    origins += [(0, 0), (max(0, height - WINDOW), max(0, width - WINDOW))]  # the corners stay covered
    template = plan.bands[0][0]
    specs = [replace(template, l0_xy=(int(x * plan.scale), int(y * plan.scale)), cell=(y, y + WINDOW, x, x + WINDOW),
                     crop=(0, 0)) for y, x in origins]
    votes = np.zeros((len(plan.task_ids), height, width), np.uint16)
    cover = np.zeros((height, width), np.uint16)
    for spec, m in zip(specs, infer(source, runner, specs, batch)):
        y, x = spec.cell[0], spec.cell[2]
        h, w = min(WINDOW, height - y), min(WINDOW, width - x)
        votes[:, y:y + h, x:x + w] += m[:, :h, :w] > 0
        cover[y:y + h, x:x + w] += 1
    return votes * 2 > cover, len(specs)


def stitched(plan, margins: dict, sigma: float | None) -> np.ndarray:
    """bool [T, H, W]: centre crops (``sigma`` None) or blended with that sigma fraction."""
    canvas = np.zeros((len(plan.task_ids), *plan.canvas), np.uint8)
    specs = [s for band in plan.bands for s in band]
    if sigma is None:
        for spec in specs:
            stitch_window(canvas, spec, margins[spec.t_rc])
        return canvas > 0
    blender = Blender(plan, len(plan.task_ids), range(len(plan.bands)), sigma_fraction=sigma)
    for spec in specs:
        blender.add(spec, margins[spec.t_rc])
    for band in range(len(plan.bands)):
        blender.finish(canvas, band)
    return canvas > 0


def seams(masks: np.ndarray, stride: int, margin: int) -> tuple[float, float]:
    """Worst tissue's seam ratio at cell edges and at window edges (disagreement rate across the
    lines / elsewhere; 1 = no seam)."""
    side = max(masks.shape[1:])
    cells = list(range(stride, side, stride))
    edges = sorted({p for c in range(0, side + stride, stride) for p in (c - margin, c + margin) if 0 < p < side})
    ratios = []
    for lines in (cells, edges):
        worst = 0.0
        for mask in masks:
            on, off = seam_rates(mask, lines)
            worst = max(worst, on / off if off else (1.0 if on == 0 else float("inf")))
        ratios.append(worst)
    return ratios[0], ratios[1]


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--engine", default=None)
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 128, 192, 240])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.125, 0.25])
    p.add_argument("--cases", nargs="+", choices=["slides", "kidney"], default=["slides", "kidney"],
                   help="the shared real slides and/or slides written from the kidney patches")
    p.add_argument("--ceiling", action="store_true",
                   help="also a second dense reference with other jitter: its Dice with the first is the ceiling")
    p.set_defaults(checkpoint=None)  # not the common conformance checkpoint: the bundled demo model by default
    args = p.parse_args()
    if args.engine and args.checkpoint:
        p.error("--engine or --checkpoint, not both")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # an engine built here from --checkpoint (or the bundled demo model), unless --engine names one
        engine_dir = args.engine or build_engine(args.checkpoint, out=Path(tmp) / "engine", threads=args.threads)[0]
        with open_engine(engine_dir, threads=args.threads) as engine:
            cases = [("slides", c) for c in (CASES if "slides" in args.cases else [])]
            cases += [("kidney", c) for c in (kidney_cases(Path(tmp)) if "kidney" in args.cases else [])]
            for kind, (path, mpp, group_name, region) in cases:
                group = scale_group(group_name)
                runner = engine.runner(group.name)
                channels = [runner.spec.tissues.index(t) for t in group.task_ids]
                with open_slide(path, mpp) as reader:
                    source = reader if region is None else Region(reader, region[:2])
                    reference, dense_windows = dense_reference(source, _Select(runner, channels),
                                                               plan_for(reader, group, region, 0), args.batch)
                    case = {"cases": kind, "slide": path.name, "group": group.name, "region": region,
                            "dense_windows": dense_windows}
                    if args.ceiling:  # the same dense procedure, other jitter: how far any stitching could agree
                        other, _ = dense_reference(source, _Select(runner, channels), plan_for(reader, group, region, 0),
                                                   args.batch, seed=1)
                        case["dense_vs_dense_dice"] = {TISSUES[t].abbrev: round(dice(reference[i], other[i]), 4)
                                                       for i, t in enumerate(group.task_ids)}
                    for overlap in args.overlaps:
                        plan = plan_for(reader, group, region, overlap)
                        specs = [s for band in plan.bands for s in band]
                        margins = {s.t_rc: m[channels] for s, m in zip(specs, infer(source, runner, specs, args.batch))}
                        for sigma in [None, *(args.sigmas if overlap else [])]:
                            masks = stitched(plan, margins, sigma)
                            cell_seams, edge_seams = seams(masks, WINDOW - overlap, overlap // 2)
                            rows.append({**case, "overlap": overlap, "blend": "none" if sigma is None else "gaussian",
                                         "sigma_fraction": sigma, "windows": plan.windows,
                                         "dice": {TISSUES[t].abbrev: round(dice(reference[i], masks[i]), 4)
                                                  for i, t in enumerate(group.task_ids)},
                                         "seam_ratio_cells": round(cell_seams, 3), "seam_ratio_edges": round(edge_seams, 3)})
                    for row in rows:
                        if row["slide"] == case["slide"] and row["group"] == case["group"]:
                            floor = seams(reference, WINDOW - row["overlap"], row["overlap"] // 2)
                            row["reference_seam_ratio_cells"], row["reference_seam_ratio_edges"] = (
                                round(floor[0], 3), round(floor[1], 3))
    summary = {kind: summarise([r for r in rows if r["cases"] == kind]) for kind in args.cases}
    print_tables(rows, summary)
    ceiling = {f"{r['slide']} {r['group']}": r["dense_vs_dense_dice"] for r in rows if "dense_vs_dense_dice" in r}
    if ceiling:
        values = [d for case in ceiling.values() for d in case.values()]
        print(f"ceiling: two dense references (jitter seeds 0 and 1) agree at Dice min {min(values):.3f}, "
              f"mean {np.mean(values):.3f}: {ceiling}")
    payload = {"environment": environment(), "rows": rows, "summary": summary, "dense_vs_dense_dice": ceiling}
    print(f"wrote {write_result('overlap', payload)}")


class _Select:
    """A runner whose margins keep only ``channels`` (the group's tissues, in task order)."""

    def __init__(self, runner, channels) -> None:
        self.runner, self.channels = runner, channels

    def infer(self, images):
        return self.runner.infer(images)[:, self.channels]


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting over all slides and groups: worst and mean tissue Dice, worst seam ratios, and
    windows relative to today's default (centre crops at the default overlap)."""
    settings = sorted({(r["overlap"], r["blend"], r["sigma_fraction"]) for r in rows},
                      key=lambda s: (s[1], s[2] or 0, s[0]))
    today = sum(r["windows"] for r in rows if r["overlap"] == DEFAULT_OVERLAP and r["blend"] == "none")
    out = []
    for overlap, blend, sigma in settings:
        mine = [r for r in rows if (r["overlap"], r["blend"], r["sigma_fraction"]) == (overlap, blend, sigma)]
        dices = [d for r in mine for d in r["dice"].values()]
        out.append({"overlap": overlap, "blend": blend, "sigma_fraction": sigma, "min_dice": min(dices),
                    "mean_dice": round(float(np.mean(dices)), 4),
                    "max_seam_ratio_cells": max(r["seam_ratio_cells"] for r in mine),
                    "max_seam_ratio_edges": max(r["seam_ratio_edges"] for r in mine),
                    "reference_max_seam_ratio_cells": max(r["reference_seam_ratio_cells"] for r in mine),
                    "reference_max_seam_ratio_edges": max(r["reference_seam_ratio_edges"] for r in mine),
                    "seam_excess_cells": max(_excess(r["seam_ratio_cells"], r["reference_seam_ratio_cells"]) for r in mine),
                    "seam_excess_edges": max(_excess(r["seam_ratio_edges"], r["reference_seam_ratio_edges"]) for r in mine),
                    "windows_vs_today": round(sum(r["windows"] for r in mine) / today, 2)})
    return out


def _excess(ratio: float, floor: float) -> float:
    """How far a seam ratio is above the reference's on the same lines (1: no worse)."""
    return ratio / max(floor, 1.0)


def print_tables(rows: list[dict], summaries: dict[str, list[dict]]) -> None:
    console = Console()
    table = Table(title=f"stitching vs the dense reference (window {WINDOW}, dense stride {DENSE_STRIDE}), per slide")
    for column in ("slide", "group", "blend", "sigma", "overlap", "windows", "Dice per tissue",
                   "seams cells (reference)", "seams edges (reference)"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["slide"][:12], r["group"], r["blend"], str(r["sigma_fraction"] or "-"), str(r["overlap"]),
                      str(r["windows"]), " ".join(f"{k} {v:.3f}" for k, v in r["dice"].items()),
                      f"{r['seam_ratio_cells']} ({r['reference_seam_ratio_cells']})",
                      f"{r['seam_ratio_edges']} ({r['reference_seam_ratio_edges']})")
    console.print(table)
    for kind, summary in summaries.items():
        table = Table(title=f"{kind}: all cases, worst tissue")
        for column in ("blend", "sigma", "overlap", "min Dice", "mean Dice", "seam ratio cells (reference)",
                       "seam ratio edges (reference)", "worst seam ratio / reference's",
                       f"windows vs today (crop, overlap {DEFAULT_OVERLAP})"):
            table.add_column(column)
        for s in summary:
            table.add_row(s["blend"], str(s["sigma_fraction"] or "-"), str(s["overlap"]), f"{s['min_dice']:.3f}",
                          f"{s['mean_dice']:.3f}", f"{s['max_seam_ratio_cells']} ({s['reference_max_seam_ratio_cells']})",
                          f"{s['max_seam_ratio_edges']} ({s['reference_max_seam_ratio_edges']})",
                          f"{max(s['seam_excess_cells'], s['seam_excess_edges']):.2f}", str(s["windows_vs_today"]))
        console.print(table)


if __name__ == "__main__":
    main()
