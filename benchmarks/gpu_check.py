"""One command for a machine with an NVIDIA GPU: TensorRT engines checked and timed.

1. builds the CPU fp32 reference engine (ONNX Runtime, all tissues);
2. builds TensorRT fp16 and int8 engines with the gpu profiles (int8 calibrated on --calibration,
   else on a calibration set sampled here from the shared slides and kidney patches);
3. checks each against the reference on real windows: per-tissue Dice agreement, max |diff|;
4. times TensorRT against the torch backend on CUDA in fp32 and fp16.

    python benchmarks/gpu_check.py [CHECKPOINT] [--calibration DIR] [--batch 8] [--window 512]

CHECKPOINT defaults to the bundled demo model.

Needs: pip install 'omniseg-rt[tensorrt,train,export]' on a machine with an NVIDIA driver.
Prints a table and writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import PATCHES, SHARED, environment, median_seconds, real_windows, write_result
from omniseg_rt.calibration.gate import compare_margins
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.hardware import nvidia_gpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="default: the bundled demo model")
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    gpus = nvidia_gpus()
    if not gpus:
        raise SystemExit("no NVIDIA GPU found (nvidia-smi): this check needs one")
    windows = real_windows(args.batch, args.window)
    # (backend, precision, device)
    builds = [("onnxruntime", "fp32", "cpu"), ("tensorrt", "fp16", None), ("tensorrt", "int8", None),
              ("torch", "fp32", "cuda"), ("torch", "fp16", "cuda")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.calibration is None:
            from omniseg_rt.calibration.sampling import calibrate

            args.calibration, _ = calibrate([SHARED / "data" / "slides", PATCHES], Path(tmp) / "calibration",
                                            tiles_per_group=16, window=args.window, mpp=0.5)
        reference = None
        for backend, precision, device in builds:
            name = f"{backend}-{precision}"
            path, manifest = build_engine(
                args.checkpoint, backend=backend, precision=precision, tissues="all", window=args.window,
                device=device, profile=f"gpu-{precision}" if backend == "tensorrt" else None,
                calibration=args.calibration if precision == "int8" else None, out=Path(tmp) / name,
            )
            with open_engine(path) as engine:
                out = engine.infer(windows)
                seconds, _ = median_seconds(lambda: engine.infer(windows), args.repeats)
                tissues = list(engine.tissues)
            if reference is None:
                reference = out
            agreement = compare_margins(tissues, reference, out)
            rows.append({"backend": backend, "precision": precision, "device": device or "cuda",
                         "seconds_per_batch": seconds, "windows_per_second": args.batch / seconds,
                         "min_dice_vs_cpu_fp32": min(r["dice"] for r in agreement),
                         "max_abs_vs_cpu_fp32": max(r["max_abs"] for r in agreement), "agreement": agreement})
    table = Table(title=f"{gpus[0]['name']} (cc {gpus[0]['compute_capability']}): {args.batch} windows "
                        f"{args.window}x{args.window}, all six tissues")
    for column in ("engine", "windows/s", "min Dice vs CPU fp32", "max |diff|"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"{r['backend']} {r['precision']} ({r['device']})", f"{r['windows_per_second']:.1f}",
                      f"{r['min_dice_vs_cpu_fp32']:.4f}", f"{r['max_abs_vs_cpu_fp32']:.3g}")
    Console().print(table)
    print(f"wrote {write_result('gpu_check', {'gpu': gpus[0], 'environment': environment(), 'rows': rows})}")


if __name__ == "__main__":
    main()
