"""Eager vs compiled torch engines alone: agreement with fp32 and windows/s per batch, host copy apart.

Builds from the bundled model (all six tissues, one graph) an eager torch engine and compiled ones
(``build --compile MODE``; a compiled engine runs one batch size, so one build per batch), each
through ``build_engine`` (accuracy gate included), then:

  - cold build seconds (compiling into the engine's cache) and warm open seconds in a fresh
    process, with inductor's FX-graph cache hits and misses counted there (misses = tuning again);
  - per-tissue Dice of the masks and max |diff| against ONNX Runtime fp32 on the CPU, on real
    kidney windows;
  - per batch size: compute seconds with the outputs left on the device (synchronised), and the
    host copy of that batch's output as float32 margins, fp16 margins and uint8 masks of all six
    tissues, and the uint8 masks the slide pipeline ships (a group's tissues, 10x: three, of the
    windows' cells: window - 2 x window / 8 px square), each in ms, the last as a share of the
    compute;
  - resizing a batch of windows read at another level (half and twice the window's side) to the
    window: on the device (upload included, what a GPU engine does) vs PIL on one CPU core (what
    a reading worker does otherwise).

On a GPU (the default where torch sees CUDA): fp16, windows of 512, batches 1 8 32 64. On a CPU:
fp32, small windows (``--window 128``), to measure whether compiling helps there and to test the
script; the ONNX Runtime fp32 reference is timed beside them.

    python benchmarks/bench_torch_engine.py [--device cuda|cpu] [--window 512] [--batches 1 8 32 64]
        [--modes default max-autotune] [--autotune-batches 32] [--repeats 10]

Prints a table and writes benchmarks/results/torch_engine_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import REPO, environment, median_seconds, real_windows, write_result
from omniseg_rt.calibration.gate import compare_margins
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.engines.arrays import HOST

WARM_OPEN = ("import json, sys, time; start = time.perf_counter()\n"
             "from torch._dynamo.utils import counters; from omniseg_rt.engines import open_engine\n"
             "open_engine(sys.argv[1]).close()\n"
             "print(json.dumps({'seconds': time.perf_counter() - start, **counters['inductor']}))")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` (synchronised, after a warm-up call)."""
    def run() -> None:
        fn()
        sync(device)

    run()
    return median_seconds(run, repeats)[0]


def profile_file(folder: Path, batch: int, window: int) -> Path:
    """A build profile whose batch is ``batch`` (what a compiled engine is compiled for)."""
    path = folder / f"batch{batch}.toml"
    path.write_text(f'backend = "torch"\nwindow = {window}\n[batch]\nmin = 1\nopt = {batch}\nmax = {max(batch, 1)}\n')
    return path


def warm_open(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WARM_OPEN, str(path)], capture_output=True, text=True, check=True,
                         cwd=REPO, timeout=900).stdout
    counts = json.loads(out.strip().splitlines()[-1])
    return {"seconds": round(counts["seconds"], 2), "fxgraph_cache_hit": counts.get("fxgraph_cache_hit", 0),
            "fxgraph_cache_miss": counts.get("fxgraph_cache_miss", 0)}


def time_runner(runner, windows: np.ndarray, batch: int, device: str, repeats: int) -> dict:
    """Compute (outputs left where they are) and host copies of one batch's output."""
    images = np.ascontiguousarray(windows[np.arange(batch) % len(windows)])
    if runner.arrays is HOST:  # a host engine (the ONNX Runtime reference): host to host
        return {"batch": batch, "compute_s": seconds(lambda: runner.infer(images), "cpu", repeats)}
    compute = seconds(lambda: runner.submit_device(images).result(), device, repeats)
    out = runner.submit_device(images).result()
    sync(device)
    # what the slide pipeline ships: a group's tissues (10x: DT, PT, VES, the most), cells only
    margin = windows.shape[-1] // 8  # the default overlap of 128 at 512 px, halved
    cells = [out[i][[0, 1, 4], margin:-margin, margin:-margin] for i in range(batch)]
    copies = {
        "float32": seconds(lambda: out.float().cpu(), device, repeats),
        "fp16": seconds(lambda: out.half().cpu(), device, repeats),
        "uint8_masks": seconds(lambda: runner.arrays.masks([out[i] for i in range(batch)]), device, repeats),
        "uint8_masks_stitched": seconds(lambda: runner.arrays.masks(cells), device, repeats),
    }
    return {"batch": batch, "compute_s": compute, "copy_s": copies}


def time_resizing(device: str, batch: int, window: int, repeats: int) -> list[dict]:
    """Seconds to resize ``batch`` windows of window/2 and 2*window px to ``window``: uploaded and
    resized on ``device``, and with PIL (BILINEAR) on one core."""
    from PIL import Image

    from omniseg_rt.engines.torch_backend import resize_windows

    rows = []
    for side in (window // 2, window * 2):
        raw = np.random.default_rng(0).integers(0, 256, (batch, 3, side, side), dtype=np.uint8)
        on_device = seconds(lambda: resize_windows(torch, torch.from_numpy(raw).to(device), window), device, repeats)
        pictures = [Image.fromarray(np.ascontiguousarray(w.transpose(1, 2, 0))) for w in raw]
        pil = seconds(lambda: [p.resize((window, window), Image.BILINEAR) for p in pictures], "cpu", max(1, repeats // 5))
        rows.append({"from": side, "to": window, "batch": batch, "device_s": on_device, "pil_one_core_s": pil})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--window", type=int)
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--modes", nargs="+", default=["default"], help="compile modes (default, max-autotune)")
    p.add_argument("--autotune-batches", type=int, nargs="+", default=[32],
                   help="batches max-autotune is built for (minutes each)")
    p.add_argument("--windows", type=int, default=8, help="real windows for the agreement check")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warm-open", type=int, nargs="+", default=[32, 4],
                   help="batches whose compiled engine is also opened again in a fresh process (10-20 s each on "
                        "an H200; the eager engine always is)")
    args = p.parse_args()
    gpu = args.device == "cuda"
    window = args.window or (512 if gpu else 128)
    batches = args.batches or ([1, 8, 32, 64] if gpu else [1, 4])
    precision = "fp16" if gpu else "fp32"
    windows = real_windows(args.windows, window)
    threads = args.threads or None
    console = Console(width=150)
    rows, timings = [], []
    device_name = torch.cuda.get_device_name(0) if gpu else environment()["cpu"]

    def save(rows: list, timings: list, resizing: list) -> Path:
        return write_result(f"torch_engine_{args.device}", {
            "environment": {**environment(), "device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda},
            "precision": precision, "window": window, "builds": rows, "timings": timings, "resizing": resizing})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_path, _ = build_engine(None, backend="onnxruntime", precision="fp32", device="cpu", tissues="all",
                                   window=window, threads=threads, out=tmp / "reference")
        with open_engine(ref_path, threads=threads) as ref:
            reference = ref.infer(windows)
            if not gpu:  # the CPU baseline, timed beside the torch engines
                timings += [{"engine": "onnxruntime fp32", **time_runner(ref.runners[0], windows, b, "cpu", args.repeats)}
                            for b in batches]
        builds = [("eager", None, max(batches))]
        for mode in args.modes:
            sizes = args.autotune_batches if mode == "max-autotune" else sorted(batches, key=lambda b: (b != 32, -b))
            builds += [(f"compiled {mode}", mode, b) for b in sizes]  # the pipeline's batch first: a cut run keeps it
        for name, mode, batch in builds:
            console.print(f"building {name}, batch {batch}")
            path, manifest = build_engine(None, backend="torch", precision=precision, device=args.device,
                                          tissues="all", window=window, compile=mode, force=True, threads=threads,
                                          profile=profile_file(tmp, batch, window), out=tmp / f"{name}-{batch}".replace(" ", "-"))
            row = {"engine": name, "batch_built": batch, "build_s": manifest.build_seconds,
                   "gate_min_dice": min(r["dice"] for r in manifest.accuracy_gate["tissues"]) if manifest.accuracy_gate else None,
                   "warm_open": warm_open(path) if mode is None or batch in args.warm_open else None}
            with open_engine(path, threads=threads) as engine:
                runner = engine.runners[0]
                row["batch_invariant"] = runner.batch_invariant
                got = engine.infer(windows)
                agreement = compare_margins(list(engine.tissues), reference, got)
                row["dice_vs_fp32"] = {r["abbrev"]: r["dice"] for r in agreement}
                row["max_abs_vs_fp32"] = max(r["max_abs"] for r in agreement)
                row["mask_agreement"] = float(((got > 0) == (reference > 0)).mean())
                for b in (batches if mode is None else [batch]):
                    timings.append({"engine": name, **time_runner(runner, windows, b, args.device, args.repeats)})
                    console.print(f"{name}, batch {b}: {b / timings[-1]['compute_s']:.1f} windows/s, host copies "
                                  f"{ {k: round(1000 * v, 2) for k, v in timings[-1].get('copy_s', {}).items()} } ms")
            rows.append(row)
            console.print(row)
            save(rows, timings, [])  # so far: a run cut short by the device call's limit keeps what it measured

    resizing = time_resizing(args.device, max(batches), window, args.repeats)
    table = Table(title=f"torch engines alone, {precision}, {window}x{window}, all six tissues, {device_name}")
    for column in ("engine", "batch", "windows/s", "x eager", "copy f32 ms", "copy f16 ms", "copy masks ms",
                   "shipped masks ms", "shipped % compute"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    eager = {t["batch"]: t["compute_s"] for t in timings if t["engine"] == "eager"}
    for t in timings:
        rate = t["batch"] / t["compute_s"]
        t["windows_per_s"] = round(rate, 2)
        speedup = eager[t["batch"]] / t["compute_s"] if t["batch"] in eager else None
        t["x_eager"] = round(speedup, 2) if speedup else None
        copy = t.get("copy_s", {})
        table.add_row(t["engine"], str(t["batch"]), f"{rate:.1f}", f"{speedup:.2f}" if speedup else "",
                      *(f"{1000 * copy[k]:.2f}" if k in copy else ""
                        for k in ("float32", "fp16", "uint8_masks", "uint8_masks_stitched")),
                      f"{100 * copy['uint8_masks_stitched'] / t['compute_s']:.1f}" if copy else "")
    console.print(table)
    builds_table = Table(title="builds: cold build vs warm open (fresh process), agreement with ONNX Runtime fp32")
    for column in ("engine", "batch", "build s", "warm open s", "cache hit/miss", "min Dice", "mask agreement"):
        builds_table.add_column(column)
    for r in rows:
        warm = r["warm_open"]
        builds_table.add_row(r["engine"], str(r["batch_built"]), f"{r['build_s']:.1f}",
                             f"{warm['seconds']:.1f}" if warm else "",
                             f"{warm['fxgraph_cache_hit']}/{warm['fxgraph_cache_miss']}" if warm else "",
                             f"{min(r['dice_vs_fp32'].values()):.4f}", f"{r['mask_agreement']:.5f}")
    console.print(builds_table)
    resize_table = Table(title=f"resizing a batch of {max(batches)} windows to {window} px")
    for column in ("from px", f"on {args.device} ms (upload included)", "PIL, one core ms", "x"):
        resize_table.add_column(column, justify="right")
    for r in resizing:
        resize_table.add_row(str(r["from"]), f"{1000 * r['device_s']:.1f}", f"{1000 * r['pil_one_core_s']:.1f}",
                             f"{r['pil_one_core_s'] / r['device_s']:.1f}")
    console.print(resize_table)
    console.print(f"wrote {save(rows, timings, resizing)}")


if __name__ == "__main__":
    main()
