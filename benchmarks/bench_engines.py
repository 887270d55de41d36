"""Engines vs the original per-tissue PyTorch loop, on the same real windows, in one run.

Rows: the original loop (one full PyTorch pass per tissue: six for all tissues, three for the
10x group), then engines built with ``omniseg-rt build`` (``--tissues all`` and the 10x group):
OpenVINO fp32, ONNX Runtime fp32, OpenVINO bf16 (only where the CPU runs bf16 natively), each
with achieved GFLOP/s against the fp32 / bf16 GEMM ceilings measured in the same run. Everything
is built first, then timed round-robin (one call of each per round, median of ``--repeats``).

    python benchmarks/bench_engines.py [--checkpoint PATH] [--batch 4] [--window 512] [--threads 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import environment, parser, real_windows, round_robin_seconds, write_result
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.engines.bench import gemm_ceiling, gflop_per_window
from omniseg_rt.hardware import native_bf16
from omniseg_rt.model import load_checkpoint


def main() -> None:
    args = parser(__doc__, threads=2).parse_args()
    torch.set_num_threads(args.threads)
    windows = real_windows(args.batch, args.window)
    images = torch.from_numpy(windows).float() / 255.0
    model = load_checkpoint(args.checkpoint)

    rows, results = [], {}

    def loop(tasks):
        return lambda: [model.forward_tasks(images, [t]) for t in tasks]

    ceilings = {"fp32": gemm_ceiling("fp32", args.threads)}
    if native_bf16():
        ceilings["bf16"] = gemm_ceiling("bf16", args.threads)
    configs = [("openvino", "fp32", "all"), ("onnxruntime", "fp32", "all"), ("openvino", "fp32", "10x")]
    if native_bf16():
        configs += [("openvino", "bf16", "all"), ("openvino", "bf16", "10x")]
    runs, engines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, tasks in (("pytorch six passes (all)", range(6)), ("pytorch three passes (10x)", (0, 1, 4))):
                runs[name] = loop(tasks)
                results[name] = {"group": name[-5:]}
            for backend, precision, tissues in configs:
                path, manifest = build_engine(args.checkpoint, backend=backend, precision=precision, tissues=tissues,
                                              window=args.window, threads=args.threads,
                                              out=Path(tmp) / f"{backend}-{precision}-{tissues}")
                engine = open_engine(path)
                engines.append(engine)
                name = f"{backend} {precision} ({tissues})"
                runs[name] = lambda engine=engine: engine.infer(windows)
                results[name] = {"group": "(all)" if tissues == "all" else "(10x)",
                                 "gflop_per_window": gflop_per_window(engine, args.window),
                                 "build_seconds": manifest.build_seconds, "gate": manifest.accuracy_gate}
            with torch.inference_mode():
                samples = dict(zip(runs, round_robin_seconds(list(runs.values()), args.repeats)))
        finally:
            for engine in engines:
                engine.close()
    for name, r in results.items():
        r["seconds"] = float(np.median(samples[name]))
        r["samples"] = samples[name]
        if "gflop_per_window" in r:
            r["achieved_gflops"] = r.pop("gflop_per_window") * args.batch / r["seconds"]

    table = Table(title=f"{args.batch} windows {args.window}x{args.window}, {args.threads} threads "
                        f"({environment().get('cpu', '?')}); GEMM ceilings " +
                        ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()))
    for column in ("variant", "median s", "windows/s", "vs original loop", "GFLOP/s", "of fp32 ceiling"):
        table.add_column(column)
    for name, r in results.items():
        base = results["pytorch six passes (all)" if r["group"] == "(all)" else "pytorch three passes (10x)"]
        r["speedup_vs_loop"] = base["seconds"] / r["seconds"]
        g = r.get("achieved_gflops")
        table.add_row(name, f"{r['seconds']:.2f}", f"{args.batch / r['seconds']:.2f}", f"{r['speedup_vs_loop']:.2f}x",
                      f"{g:.0f}" if g else "", f"{g / ceilings['fp32']:.0%}" if g else "")
        rows.append({"variant": name, **r})
    Console().print(table)
    if not native_bf16():
        print("bf16 rows skipped: this CPU has no native bf16 (AMX / AVX-512 BF16)")
    path = write_result("engines", {"benchmark": "engines", "checkpoint": args.checkpoint, "batch": args.batch,
                                    "window": args.window, "threads": args.threads, "environment": environment(),
                                    "gemm_ceiling_gflops": ceilings, "native_bf16": native_bf16(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
