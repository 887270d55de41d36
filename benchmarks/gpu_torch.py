"""On an NVIDIA GPU without TensorRT: the torch backend timed and checked, fused vs per-tissue.

Times, on real kidney windows 512x512 and for all six tissues:
  - the original way: the whole network once per tissue (six passes), fp32;
  - our fused forward (backbone once, six heads as batched matrix products), fp32 and fp16
    channels_last, and fp16 replayed from a CUDA graph;
  - the engine path: ``build_engine(backend="torch", precision="fp16", device="cuda")`` (which runs
    the accuracy gate against ONNX Runtime fp32 on the CPU) and ``engine.infer`` (host to host).
Checks fp16 against fp32 on the same windows: per-tissue Dice agreement and max |diff|.

    python benchmarks/gpu_torch.py --checkpoint CKPT [--batches 1 8 32] [--repeats 20]

Prints a table and writes benchmarks/results/gpu_torch.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import environment, parser, real_windows, write_result
from omniseg_rt.calibration.gate import compare_margins
from omniseg_rt.engines import build_engine, open_engine
from omniseg_rt.model import load_checkpoint
from omniseg_rt.tissues import TISSUES


def cuda_seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` on the GPU (synchronised, after two warm-ups)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def margins(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, :, 1] - logits[:, :, 0]).float()


def main() -> None:
    p = parser(__doc__, threads=16)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    args.repeats = max(args.repeats, 10)
    tissues = [t.task_id for t in TISSUES]
    torch.backends.cudnn.benchmark = True
    fp32 = load_checkpoint(args.checkpoint, device="cuda").eval()
    fp16 = load_checkpoint(args.checkpoint, device="cuda").half().eval()
    rows, agreement = [], None
    for batch in args.batches:
        host = real_windows(batch, args.window)
        x = torch.from_numpy(host).cuda().float() / 255.0
        xh = x.half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ways = {
                "six passes fp32 (original)": lambda: [fp32.forward_tasks(x, [t]) for t in tissues],
                "fused fp32": lambda: fp32.forward_tasks(x, tissues),
                "fused fp16 channels_last": lambda: fp16.forward_tasks(xh, tissues),
            }
            times = {name: cuda_seconds(fn, args.repeats) for name, fn in ways.items()}
            graph, static_in = torch.cuda.CUDAGraph(), xh.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    fp16.forward_tasks(static_in, tissues)
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                static_out = fp16.forward_tasks(static_in, tissues)
            times["fused fp16 CUDA graph"] = cuda_seconds(graph.replay, args.repeats)
            reference = margins(fp32.forward_tasks(x, tissues)).cpu().numpy()
            half = margins(fp16.forward_tasks(xh, tissues)).cpu().numpy()
            graph.replay()
            torch.cuda.synchronize()
            replayed = margins(static_out).cpu().numpy()
        agreement = compare_margins(tissues, reference, half)
        base = times["six passes fp32 (original)"]
        for name, seconds in times.items():
            rows.append({"batch": batch, "way": name, "seconds": seconds, "windows_per_second": batch / seconds,
                         "speedup_vs_six_passes": base / seconds})
        rows[-1]["graph_equals_eager"] = bool((abs(replayed - half) <= 1e-3 * abs(half).max()).all())
    engine_row = {}
    with tempfile.TemporaryDirectory() as tmp:
        begin = time.perf_counter()
        path, manifest = build_engine(args.checkpoint, backend="torch", precision="fp16", device="cuda",
                                      tissues="all", out=Path(tmp) / "torch-fp16")
        engine_row["build_seconds"] = time.perf_counter() - begin
        engine_row["gate"] = manifest.accuracy_gate
        host = real_windows(max(args.batches), args.window)
        with open_engine(path) as engine:
            seconds = cuda_seconds(lambda: engine.infer(host), args.repeats)
        engine_row.update(batch=len(host), seconds=seconds, windows_per_second=len(host) / seconds)
    gpu = torch.cuda.get_device_name()
    table = Table(title=f"{gpu}: windows {args.window}x{args.window}, all six tissues, torch {torch.__version__}")
    for column in ("batch", "way", "windows/s", "x six passes"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["batch"]), r["way"], f"{r['windows_per_second']:.1f}", f"{r['speedup_vs_six_passes']:.2f}")
    table.add_row(str(engine_row["batch"]), "engine torch fp16 (host uint8 -> host margins)",
                  f"{engine_row['windows_per_second']:.1f}", "")
    console = Console()
    console.print(table)
    for a in agreement:
        console.print(f"fp16 vs fp32 {a['abbrev']}: Dice {a['dice']:.4f}, max |diff| {a['max_abs']:.3g}")
    print(f"wrote {write_result('gpu_torch', {'gpu': gpu, 'environment': environment(), 'rows': rows, 'fp16_agreement': agreement, 'engine': engine_row})}")


if __name__ == "__main__":
    main()
