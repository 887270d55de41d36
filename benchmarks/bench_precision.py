"""fp32 vs int8 (vs bf16 where the CPU runs it natively) for all six tissues, one run, this CPU.

Calibrates on the shared slides and patches (``--tiles-per-group`` windows of 512 per scale
group, a quarter held out), builds engines from the bundled all-tissue graph -- ONNX Runtime
fp32 (the baseline), OpenVINO fp32, OpenVINO int8 (Q/DQ), ONNX Runtime int8, OpenVINO bf16 where
native; INT8 graphs quantized with ONNX Runtime and with NNCF; OpenVINO fp32 and int8 also with
the exported GroupNorm (``--no-graph-rewrites``) -- scores each against ONNX Runtime fp32 on the
held-out windows (per-tissue Dice agreement of the masks, max |diff|), then times all of them on
the same real windows round-robin (median of ``--repeats`` rounds). Also: FP16 graph parity.

    python benchmarks/bench_precision.py [--threads 2] [--batch 4] [--tiles-per-group 16]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import PATCHES, SHARED, environment, parser, real_windows, round_robin_seconds, write_result
from omniseg_rt.calibration.gate import compare_margins
from omniseg_rt.calibration.sampling import calibrate, load_windows
from omniseg_rt.data import DEMO_GRAPH
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.hardware import native_bf16


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--tiles-per-group", type=int, default=16)
    args = p.parse_args()
    windows = real_windows(args.batch, args.window)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cal, _ = calibrate([SHARED / "data" / "slides", PATCHES], tmp / "cal", tiles_per_group=args.tiles_per_group,
                           window=args.window, mpp=0.5)
        held = np.concatenate([load_windows(cal, g, "holdout") for g in ("5x", "10x", "40x")])
        # (backend, precision, int8 tool, OpenVINO graph rewrites); rows 2-3 against 4-5 measure the rewrite
        builds = [("onnxruntime", "fp32", None, True), ("openvino", "fp32", None, True),
                  ("openvino", "fp32", None, False), ("openvino", "int8", "onnxruntime", True),
                  ("openvino", "int8", "onnxruntime", False), ("openvino", "int8", "nncf", True),
                  ("onnxruntime", "int8", "onnxruntime", True)]
        if native_bf16():
            builds.append(("openvino", "bf16", None, True))
        engines, reference = [], None
        try:
            for backend, precision, tool, rewrites in builds:
                name = f"{backend}-{precision}-{tool}" + ("" if rewrites else "-exported")
                path, manifest = build_engine(DEMO_GRAPH, backend=backend, precision=precision, out=tmp / name,
                                              int8_tool=tool or "onnxruntime", graph_rewrites=rewrites,
                                              calibration=cal if precision == "int8" else None, window=args.window,
                                              threads=args.threads, force=True)
                engine = open_engine(path, threads=args.threads)
                engines.append(engine)
                margins = np.concatenate([engine.infer(held[i:i + args.batch]) for i in range(0, len(held), args.batch)])
                reference = margins if reference is None else reference
                agreement = compare_margins(list(engine.tissues), reference, margins)
                rows.append({"backend": backend, "precision": precision, "int8_tool": tool,
                             "graph_rewrites": rewrites and backend == "openvino", "agreement": agreement,
                             "min_dice": min(r["dice"] for r in agreement),
                             "max_abs": max(r["max_abs"] for r in agreement), "gate": manifest.accuracy_gate})
            times = round_robin_seconds([lambda e=e: e.infer(windows) for e in engines], args.repeats)
        finally:
            for engine in engines:
                engine.close()
        for row, samples in zip(rows, times):
            row.update(seconds_per_batch=float(np.median(samples)), samples=samples,
                       windows_per_second=args.batch / float(np.median(samples)))
        from omniseg_rt.calibration.fp16 import convert_fp16
        import onnxruntime as ort

        convert_fp16(DEMO_GRAPH, tmp / "fp16.onnx")
        fp32 = ort.InferenceSession(str(DEMO_GRAPH)).run(None, {"image": held})[0]
        fp16 = ort.InferenceSession(str(tmp / "fp16.onnx")).run(None, {"image": held})[0]
        fp16_parity = {"max_abs": float(np.abs(fp32 - fp16).max()), "logit_range": float(np.ptp(fp32)),
                       "agreement": compare_margins(list(range(6)), fp32, fp16)}
    base = rows[0]["seconds_per_batch"]
    table = Table(title=f"all six tissues, {args.batch} windows {args.window}x{args.window}, {args.threads} threads; "
                        f"Dice vs ONNX Runtime fp32 on {len(held)} held-out windows")
    for column in ("engine", "windows/s", "x ORT fp32", "min Dice", "max |diff|", "Dice per tissue"):
        table.add_column(column)
    for r in rows:
        label = (f"{r['backend']} {r['precision']}" + (f" ({r['int8_tool']})" if r["int8_tool"] else "")
                 + (" exported GroupNorm" if r["backend"] == "openvino" and not r["graph_rewrites"] else ""))
        table.add_row(label, f"{r['windows_per_second']:.2f}",
                      f"{base / r['seconds_per_batch']:.2f}", f"{r['min_dice']:.4f}", f"{r['max_abs']:.3g}",
                      " ".join(f"{a['abbrev']} {a['dice']:.3f}" for a in r["agreement"]))
    console = Console()
    console.print(table)
    if not native_bf16():
        console.print("bf16: not measured, this CPU has no native bf16 (AMX / AVX-512 BF16)")
    console.print(f"FP16 graph (ORT CPU) vs fp32: max |diff| {fp16_parity['max_abs']:.3g} of a logit range "
                  f"{fp16_parity['logit_range']:.3g}; min Dice {min(a['dice'] for a in fp16_parity['agreement']):.4f}")
    print(f"wrote {write_result('precision', {'environment': environment(), 'rows': rows, 'fp16_parity': fp16_parity})}")


if __name__ == "__main__":
    main()
