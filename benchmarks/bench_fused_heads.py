"""CPU time of all six tissues on one batch: the original per-tissue loop vs our fused forms.

The original Omni-Seg code ran the whole network once per tissue (six passes). We time, side by
side in one run on the same real windows and thread count:

1. six single-task passes of ``forward_tasks`` in PyTorch (the original's cost);
2. one fused ``forward_tasks`` in PyTorch (backbone once, six heads as batched MatMuls);
3. the exported fused graph module in PyTorch (uint8 in, fg - bg margins out);
4. the same graph exported to ONNX and run by ONNX Runtime on the CPU.

    python benchmarks/bench_fused_heads.py [--checkpoint PATH] [--batch 4] [--window 512] [--threads 2]
"""

from __future__ import annotations


import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from _common import environment, median_seconds, parser, real_windows, write_result
from omniseg_rt.export.onnx_graph import simplify, to_onnx
from omniseg_rt.export.wrapper import FusedGraph
from omniseg_rt.model import load_checkpoint
from omniseg_rt.tissues import TISSUES


def main() -> None:
    args = parser(__doc__, threads=torch.get_num_threads()).parse_args()
    torch.set_num_threads(args.threads)

    model = load_checkpoint(args.checkpoint)
    windows = real_windows(args.batch, args.window)
    images = torch.from_numpy(windows).float() / 255.0
    tasks = list(range(6))

    def fused():
        return model.forward_tasks(images, tasks)

    def separate():
        return [model.forward_tasks(images, [t]) for t in tasks]

    graph_module = FusedGraph(model, tasks, [TISSUES[t].scale_id for t in tasks])
    pixels = torch.from_numpy(windows)
    proto, _ = simplify(to_onnx(graph_module, args.window, 17))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def graph_torch():
        return graph_module(pixels)

    def graph_ort():
        return session.run(None, {"image": windows})[0]

    timings = {}
    with torch.inference_mode():
        for name, fn in [("six_single_task_passes", separate), ("fused_forward_tasks", fused),
                         ("fused_graph_torch", graph_torch), ("onnxruntime", graph_ort)]:
            fn()  # warm-up: oneDNN primitives, ORT arena
            timings[name] = median_seconds(fn, args.repeats)
        torch.testing.assert_close(fused(), torch.cat(separate(), dim=1), atol=1e-3, rtol=0)
    t_sep = timings["six_single_task_passes"][0]

    table = Table(title=f"{args.batch} windows {args.window}x{args.window}, six tissues, "
                        f"{args.threads} threads, family {model.family}")
    for column in ("variant", "passes", "median s", "windows/s", "speed-up"):
        table.add_column(column)
    labels = {
        "six_single_task_passes": ("PyTorch: six single-task passes (original)", "6"),
        "fused_forward_tasks": ("PyTorch: one fused forward_tasks", "1"),
        "fused_graph_torch": ("PyTorch: the exported fused module", "1"),
        "onnxruntime": ("ONNX Runtime CPU: the exported graph", "1"),
    }
    for name, (label, passes) in labels.items():
        t = timings[name][0]
        table.add_row(label, passes, f"{t:.2f}", f"{args.batch / t:.2f}", f"{t_sep / t:.2f}x")
    Console().print(table)
    path = write_result("fused_heads", {
        "benchmark": "fused_heads",
        "checkpoint": args.checkpoint,
        "family": model.family,
        "batch": args.batch,
        "window": args.window,
        "threads": args.threads,
        "torch": torch.__version__,
        "environment": environment(),
        "onnxruntime": ort.__version__,
        "seconds": {name: all_times for name, (_, all_times) in timings.items()},
        "median_seconds": {name: t for name, (t, _) in timings.items()},
        "speedup_vs_six_passes": {name: t_sep / t for name, (t, _) in timings.items()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
