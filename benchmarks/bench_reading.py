"""How fast can this machine feed an engine? Windows/s read from a slide, no engine at all.

Reads the first ``--windows`` windows of a group's plan (default 40x, the most windows) of a slide
(default: a kidney mosaic slide written at run time, as in bench_pipeline.py: JPEG tiles, 0.25
um/px; or ``--slide`` [``--mpp``]) through segment's readers: ``--counts`` threads of this process
and the same numbers of reading processes, resized to the window on the host as a CPU engine takes
them and as read at their level as a GPU engine takes them (``--resize both``). A fast GPU engine
can go no faster than the best row; a reading process's start-up is left out (warm pools).

    python benchmarks/bench_reading.py [--slide PATH --mpp X] [--group 40x] [--windows 600]
        [--counts 1 2 4 8 16] [--resize host device both]

Prints a table and writes benchmarks/results/reading_<slide>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import environment, slide_plans, write_result
from bench_pipeline import _patches, kidney_slide
from omniseg_rt.runtime.readers import Prefetcher, ReadProcesses
from omniseg_rt.slide import open_slide
from omniseg_rt.tissues import SCALE_GROUPS


def specs_of(slide: Path, mpp: float | None, group_name: str, count: int) -> list:
    with open_slide(slide, mpp) as reader:
        plan = next(p for p in slide_plans(reader) if p.group == group_name)
    return [s for band in plan.bands for s in band][:count]


def timed(prefetcher: Prefetcher, specs: list) -> tuple[float, float]:
    """(wall seconds, summed reading seconds) of reading ``specs`` through ``prefetcher``."""
    start = time.perf_counter()
    for _ in prefetcher.iterate(specs):
        pass
    return time.perf_counter() - start, prefetcher.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path)
    p.add_argument("--mpp", type=float)
    p.add_argument("--group", default="40x", choices=[g.name for g in SCALE_GROUPS])
    p.add_argument("--windows", type=int, default=600)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--resize", default="both", choices=["host", "device", "both"])
    p.add_argument("--side", type=int, default=20480, help="side of the kidney slide written when no --slide")
    args = p.parse_args()
    console = Console(width=140)
    resizes = {"host": [True], "device": [False], "both": [True, False]}[args.resize]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide or kidney_slide(Path(tmp) / "kidney.svs", args.side, 0, _patches())
        specs = specs_of(slide, args.mpp, args.group, args.windows)
        sizes = sorted({tuple(s.read_size) for s in specs})
        console.print(f"{len(specs)} {args.group} windows of {slide.name}, read sizes {sizes[:3]}")
        with open_slide(slide, args.mpp) as reader:
            for count in args.counts:
                for resize in resizes:
                    prefetcher = Prefetcher(reader, count, 2 * count + 4, resize=resize)
                    timed(prefetcher, specs[: 2 * count])  # warm: the threads and the slide's caches
                    prefetcher = Prefetcher(reader, count, 2 * count + 4, resize=resize)
                    wall, summed = timed(prefetcher, specs)
                    prefetcher.close()
                    rows.append({"readers": f"{count} threads", "resize": "host" if resize else "device",
                                 "windows_per_s": len(specs) / wall, "ms_per_window": 1000 * summed / len(specs)})
                    console.print(rows[-1])
        for count in args.counts:
            with ReadProcesses(slide, args.mpp, count) as processes:
                for resize in resizes:
                    timed(processes.prefetcher(2 * count + 4, resize), specs[: 2 * count])  # started and warm
                    wall, summed = timed(processes.prefetcher(2 * count + 4, resize), specs)
                    rows.append({"readers": f"{count} processes", "resize": "host" if resize else "device",
                                 "windows_per_s": len(specs) / wall, "ms_per_window": 1000 * summed / len(specs)})
                    console.print(rows[-1])
    env = environment()
    table = Table(title=f"reading {len(specs)} {args.group} windows of {slide.name}, no engine, {env['cpu']} "
                        f"({env['cpus']} cores)")
    for column in ("readers", "resized on", "windows/s", "ms per window (each reader)"):
        table.add_column(column, justify="left" if column == "readers" else "right")
    for r in rows:
        table.add_row(r["readers"], r["resize"], f"{r['windows_per_s']:.0f}", f"{r['ms_per_window']:.1f}")
    console.print(table)
    path = write_result(f"reading_{slide.stem}", {"environment": env, "group": args.group, "windows": len(specs),
                                                  "rows": rows})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
