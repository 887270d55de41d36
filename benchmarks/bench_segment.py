"""``segment`` end to end vs the engine alone, its time breakdown, peak RSS vs slide size, and
network passes per 4096x4096 40x region vs the original pipeline.

1. Builds (or takes, ``--engine``) the bundled model's CPU engine; segments a real slide (the
   bundled sample, or ``--slide`` [``--mpp``]; all tissues) and reports windows/s end to end against what the same engine's runners need
   for the same windows and batches alone (ratio target >= 0.9), with seconds spent reading,
   inferring, stitching and writing.
2. Peak RSS of ``segment`` (one subprocess each) on a synthetic slide and one 4x larger.
3. Passes per 4096x4096 40x region: our plan (one pass per window per scale group, all of the
   group's tissues at once) vs the original's 1,917.

    python benchmarks/bench_segment.py [--engine DIR] [--threads 2] [--slide PATH --mpp X] [--blends gaussian none]
                                       [--readers N] [--read-with threads processes] [--write-processes 0 2]
                                       [--only-rss]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import REPO, GpuBusy, environment, parser, slide_plans, write_result
from omniseg_rt.data import SAMPLE_SLIDE
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.engines.arrays import HOST
from omniseg_rt.runtime import segment
from omniseg_rt.runtime.pipeline import _runner_for
from omniseg_rt.slide.plan import plan_group, read_window
from omniseg_rt.runtime.settings import DEFAULT_OVERLAP
from omniseg_rt.slide import open_slide
from omniseg_rt.tissues import SCALE_GROUPS

ORIGINAL_PASSES_PER_REGION = 1917

RSS_SCRIPT = """
import json, resource, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from synthetic import tissue_pattern, write_aperio
from omniseg_rt.runtime import segment
side, engine, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
slide = write_aperio(out / f"synthetic-{{side}}.svs", tissue_pattern(side, side, block=64), levels=3)
[r] = segment(slide, engine=engine, out=out / "seg", tissues="10x")
print(json.dumps({{"status": r.status, "windows": r.windows, "peak_rss_mb":
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


ENGINE_RSS_SCRIPT = """
import json, resource, sys
import numpy as np
from omniseg_rt.engines import open_engine
with open_engine(sys.argv[1]) as engine:
    for runner in engine.runners:
        runner.infer(np.full((4, 3, 512, 512), 200, np.uint8))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def engine_alone_seconds(engine, plans, reader, batch: int, repeats: int = 2) -> float:
    """Seconds the engine's runners need for the plans' windows in the same batches (best of
    ``repeats`` per batch shape), with real pixels from the slide, handing back what the pipeline
    takes: host margins from a CPU engine; from an engine whose outputs stay on its device (torch
    on CUDA), the uint8 masks of the group's tissues over each window's cell (float margins never
    cross to the host there: timing them would understate the engine several times)."""
    total = 0.0
    for plan in plans:
        runner, channels = _runner_for(engine, plan.group, plan.task_ids)  # the group's graph, or an all-tissue one
        specs = [s for band in plan.bands for s in band]
        if not specs:
            continue
        pixels = np.stack([read_window(reader, s) for s in specs[:batch]])
        run = _pipeline_call(runner, channels, plan.overlap // 2)
        run(pixels)
        best = min(_timed(lambda: run(pixels)) for _ in range(repeats))
        full, rest = divmod(len(specs), batch)
        total += full * best
        if rest:
            small = pixels[:rest]
            run(small)
            total += min(_timed(lambda: run(small)) for _ in range(repeats))
    return total


def _pipeline_call(runner, channels: list[int], margin: int):
    """images -> what the pipeline takes from ``runner`` for them (see engine_alone_seconds)."""
    if runner.arrays is HOST:
        return runner.infer

    def on_device(images):
        out = runner.submit_device(images).result()
        cell = slice(margin, images.shape[-1] - margin)
        return runner.arrays.masks([out[i][channels, cell, cell] for i in range(len(images))])

    return on_device


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def end_to_end(engine_dir, threads: int, tmp: Path, slide: Path, mpp: float | None, readers: int = 2,
               blend: str | None = None, read_with: str = "threads", write_processes: int | None = None) -> dict:
    """Segment ``slide`` (all tissues, ``blend``: segment's default when None; windows read on
    ``readers`` threads or processes); time the same windows through the runners alone (warm)."""
    with open_engine(engine_dir, threads=threads) as engine:
        start = time.perf_counter()
        with GpuBusy() as busy:
            [result] = segment(slide, engine=engine, out=tmp / f"seg-{blend}-{read_with}-{write_processes}", mpp=mpp, readers=readers,
                               blend=blend, read_with=read_with, write_processes=write_processes)
        wall = time.perf_counter() - start
        assert result.status == "done", result.reason
        settings = json.loads((Path(result.out) / "manifest.json").read_text())["settings"]
        with open_slide(slide, mpp) as reader:
            plans = slide_plans(reader, settings["window"], settings["overlap"])
            alone = engine_alone_seconds(engine, plans, reader, settings["batch"])
    windows = sum(result.windows.values())
    return {"slide": slide.name, "readers": readers, "read_with": read_with, "blend": settings["blend"],
            "write_processes": settings["write_processes"],
            "windows": result.windows,
            "wall_seconds": wall,
            "windows_per_second": windows / wall, "engine_alone_seconds": alone,
            "engine_alone_windows_per_second": windows / alone, "ratio": alone / wall,
            "breakdown_seconds": result.seconds, "batch": settings["batch"], "gpu_busy": busy.fraction}


def peak_rss(engine_dir, tmp: Path) -> list[dict]:
    """Peak RSS of the engine alone (open + one batch per graph) and of segment on two sizes."""
    out = subprocess.run([sys.executable, "-c", ENGINE_RSS_SCRIPT, str(engine_dir)], capture_output=True, text=True,
                         check=True)
    rows = [{"run": "engine alone (open, one batch of 4 per graph)", **json.loads(out.stdout.strip().splitlines()[-1])}]
    for side in (2048, 4096):
        code = RSS_SCRIPT.format(tests=str(REPO / "tests"))
        out = subprocess.run([sys.executable, "-c", code, str(side), str(engine_dir), str(tmp)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"run": f"segment, synthetic {side}x{side} px slide (10x: {sum(result['windows'].values())} windows)",
                     **result})
    return rows


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--engine", default=None)
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--only-rss", action="store_true", help="skip the end-to-end run")
    p.add_argument("--slide", type=Path, default=SAMPLE_SLIDE, help="slide for the end-to-end run")
    p.add_argument("--mpp", type=float, default=None, help="its pixel size, if it states none")
    p.add_argument("--readers", type=int, default=2, help="segment's readers (threads or processes)")
    p.add_argument("--read-with", nargs="+", default=["threads"], choices=["threads", "processes"],
                   help="reading on threads and/or processes, one run each")
    p.add_argument("--write-processes", type=int, nargs="+", default=[None],
                   help="polygon-tracing processes, one run each (default: segment's)")
    p.add_argument("--blends", nargs="+", default=["gaussian"], help="stitching modes to run, one after the other")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine_dir = args.engine or build_engine(None, out=tmp / "engine", threads=args.threads)[0]
        runs = [] if args.only_rss else [end_to_end(engine_dir, args.threads, tmp, args.slide, args.mpp, args.readers,
                                                    b, how, w) for b in args.blends for how in args.read_with
                                         for w in args.write_processes]
        rss = [] if args.skip_rss else peak_rss(engine_dir, tmp)
    passes = []
    for group in SCALE_GROUPS:
        plan = plan_group(group, group.nominal_mpp, 0.25, (4096, 4096), (1.0,), lambda mpp: 0, 512, DEFAULT_OVERLAP)
        passes.append({"group": group.name, "windows": plan.windows})
    ours = sum(p["windows"] for p in passes)

    table = Table(title=f"segment ({args.slide.name}, all tissues)")
    for column in ("measure", "value"):
        table.add_column(column)
    for e2e in runs:
        blend = f"blend {e2e['blend']}, {e2e['read_with']}, {e2e['write_processes']} tracers: "
        table.add_row(blend + "windows (5x/10x/40x)", " / ".join(str(v) for v in e2e["windows"].values()))
        table.add_row(blend + f"segment windows/s (batch {e2e['batch']}, {e2e['readers']} {e2e['read_with']})",
                      f"{e2e['windows_per_second']:.2f}")
        table.add_row(blend + "engine alone windows/s", f"{e2e['engine_alone_windows_per_second']:.2f}")
        table.add_row(blend + "ratio (target >= 0.9)", f"{e2e['ratio']:.2f}")
        if e2e["gpu_busy"] is not None:
            table.add_row(blend + "GPU busy (NVML utilisation during segment)", f"{e2e['gpu_busy']:.0%}")
        seconds = e2e["breakdown_seconds"]
        table.add_row(blend + "seconds: " + ", ".join(seconds), ", ".join(f"{v:.1f}" for v in seconds.values()))
    for r in rss:
        table.add_row(f"peak RSS: {r['run']}", f"{r['peak_rss_mb']:.0f} MB")
    per_group = ", ".join(f"{p['group']} {p['windows']}" for p in passes)
    table.add_row("passes per 4096^2 40x region", f"{ours} ({per_group}) vs original {ORIGINAL_PASSES_PER_REGION} "
                  f"({ORIGINAL_PASSES_PER_REGION / ours:.1f}x fewer)")
    Console().print(table)
    payload = {"environment": environment(), "end_to_end": runs, "rss": rss,
               "passes_per_region": {"ours": ours, "groups": passes, "original": ORIGINAL_PASSES_PER_REGION}}
    name = "segment_rss" if args.only_rss else f"segment_{args.slide.stem}"
    print(f"wrote {write_result(name, payload)}")


if __name__ == "__main__":
    main()
