"""``omniseg-rt export MODEL``: fused, class-conditioned ONNX graphs from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, rows_table


def export(
    model: Annotated[Path, typer.Argument(help="An Omni-Seg checkpoint (ours or the original code's).")],
    tissues: Annotated[
        Optional[str],
        typer.Option(help="all | a scale group (5x, 10x, 40x) | e.g. DT,PT. Default: one graph per scale group."),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="A .onnx path, or a folder. Default: ./export/<checkpoint>_<set>.onnx")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    window: Annotated[int, typer.Option(help="Nominal window side in pixels (multiple of 16).")] = 512,
) -> None:
    """Export MODEL to ONNX graphs that run the backbone once and all tissues' heads together."""
    from omniseg_rt.export import export_graphs

    with console.status("exporting") as status:
        graphs = export_graphs(model, tissues=tissues, out=out, opset=opset, window=window,
                               on_progress=lambda message: status.update(message))
    rows = [
        [str(g.path), ",".join(t["abbrev"] for t in g.manifest.tissues),
         f"{g.manifest.parity['relative']:.1e}", "yes" if g.manifest.simplified else "no",
         f"{g.path.stat().st_size / 1e6:.1f}"]
        for g in graphs
    ]
    console.print(rows_table("Exported graphs (uint8 image [B,3,H,W] -> logits [B,T,H,W])",
                             ["graph", "tissues", "parity (of logit range)", "simplified", "MB"], rows))


def register(app: typer.Typer) -> None:
    app.command("export")(domain_errors(export))
