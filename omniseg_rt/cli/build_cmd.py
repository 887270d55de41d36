"""``omniseg-rt build [MODEL]``: a ready-to-run engine directory for this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, key_value_table, rows_table
from omniseg_rt.errors import UsageError


def build(
    model: Annotated[Optional[Path], typer.Argument(
        help="A checkpoint (.pth) or an exported graph (.onnx). Default: the bundled demo model.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 | fp16 | int8")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto | openvino | onnxruntime | tensorrt | torch")] = None,
    tissues: Annotated[Optional[str], typer.Option(help="As in export; default one graph per scale group.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="A shipped profile name (cpu, gpu-fp16, ...) or a .toml")] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="A calibration set (int8).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Engine directory. Default: ./engines/<model>-<backend>-<precision>")] = None,
    window: Annotated[Optional[int], typer.Option(help="Window side in pixels (multiple of 16).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all this process may use).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | tensorrt (onnxruntime providers; torch)")] = None,
    force: Annotated[bool, typer.Option(help="Build even if reduced precision fails the accuracy gate.")] = False,
    calibration_method: Annotated[str, typer.Option(
        help="int8 activation ranges: percentile (99.999th, the default), minmax or entropy.")] = "percentile",
    int8_tool: Annotated[str, typer.Option(help="int8 quantizer: onnxruntime or nncf (pip install nncf).")] = (
        "onnxruntime"),
    int8_keep_float: Annotated[Optional[str], typer.Option(
        help="int8: convolutions left float, comma-separated: first, last or the start of a node name. Default "
             "first,last,/layer0/,/layer1/,/x4_resb/,/x2_resb/,/x1_resb/ (the full- and half-resolution blocks "
             "and the decoder's quarter-resolution one: what passes the gate); "
             "first,last is faster where the gate allows it.")] = None,
    min_dice: Annotated[float, typer.Option(help="Accuracy gate: minimum Dice vs fp32 for every tissue.")] = 0.97,
    compile: Annotated[Optional[str], typer.Option(
        help="torch backend: compile the model with torch.compile (inductor), default or max-autotune (slower "
             "build, faster kernels). Compiled at build time into the engine's cache/; runs the profile's batch.")] = None,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", hidden=True)] = False,
    graph_rewrites: Annotated[bool, typer.Option(
        help="OpenVINO: run GroupNorm in its reshape-free form (--no-graph-rewrites: as exported).")] = True,
) -> None:
    """Build an engine: export, compile for the backend, gate reduced precision, write a manifest."""
    from omniseg_rt.engines.build import AccuracyGateError, build_engine
    from omniseg_rt.engines.profiles import CUDA_GRAPHS_GONE

    if cuda_graphs:
        raise UsageError(f"--cuda-graphs: {CUDA_GRAPHS_GONE}")
    try:
        with console.status("building") as status:
            path, manifest = build_engine(model, precision=precision, backend=backend, tissues=tissues,
                                          profile=profile, calibration=calibration, out=out, window=window,
                                          threads=threads, device=device, force=force, min_dice=min_dice,
                                          calibration_method=calibration_method, int8_tool=int8_tool,
                                          int8_keep_float=int8_keep_float,
                                          graph_rewrites=graph_rewrites, compile=compile,
                                          on_progress=lambda message: status.update(message))
    except AccuracyGateError as exc:
        console.print(gate_table(exc.gate), style="red")
        raise
    if manifest.accuracy_gate:
        console.print(gate_table(manifest.accuracy_gate))
    console.print(key_value_table(f"engine {path}", {
        "backend": manifest.backend,
        "precision": manifest.precision,
        "graphs": ", ".join(f"{g.name} ({len(g.tissues)} tissues)" for g in manifest.graphs),
        "window": manifest.window,
        **({"compiled": f"{manifest.compiled['mode']}, batch {manifest.compiled['batch']}"} if manifest.compiled else {}),
        "cpu": manifest.built_on["cpu"]["name"],
        "build time": f"{manifest.build_seconds:.1f} s",
        "next": f"omniseg-rt bench {path}",
    }))


def gate_table(gate: dict):
    rows = [[r["abbrev"], f"{r['dice']:.4f}", f"{r['max_abs']:.3g}", f"{r['mean_abs']:.3g}",
             "ok" if r["dice"] >= gate["threshold"] else "FAIL"] for r in gate["tissues"]]
    title = (f"accuracy gate: Dice >= {gate['threshold']} vs fp32 on {gate['windows']} windows"
             + (" (forced)" if gate.get("forced") else ""))
    return rows_table(title, ["tissue", "Dice", "max |diff|", "mean |diff|", "verdict"], rows)


def register(app: typer.Typer) -> None:
    app.command("build")(domain_errors(build))
