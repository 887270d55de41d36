"""``omniseg-rt bench ENGINE``: latency, windows/s and GFLOP/s against GEMM ceilings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, key_value_table, print_json


def bench(
    engine: Annotated[Path, typer.Argument(help="An engine directory (omniseg-rt build).")],
    batch: Annotated[int, typer.Option(help="Windows per batch.")] = 4,
    window: Annotated[int, typer.Option(help="Window side in pixels.")] = 512,
    repeats: Annotated[int, typer.Option(help="Timed batches (after one warm-up).")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Override the engine's CPU threads.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Time ENGINE on real windows of the bundled sample slide (all of its tissues)."""
    from omniseg_rt.engines import open_engine
    from omniseg_rt.engines.bench import bench_engine

    with open_engine(engine, threads=threads) as opened:
        result = bench_engine(opened, batch=batch, window=window, repeats=repeats)
    if json_out:
        print_json(result)
        return
    rows = {
        "engine": f"{result['backend']} {result['precision']}, {result['graphs']} graph(s), "
        f"tissues {result['tissues']}",
        "batch": f"{batch} x {window}x{window}",
        "median latency": f"{result['median_batch_seconds'] * 1000:.0f} ms per batch",
        "throughput": f"{result['windows_per_second']:.2f} windows/s (all tissues)",
    }
    if "achieved_gflops" in result:
        rows["achieved"] = f"{result['achieved_gflops']:.1f} GFLOP/s ({result['gflop_per_window']:.1f} GFLOP/window)"
    for precision, value in result.get("gemm_ceiling_gflops", {}).items():
        rows[f"GEMM ceiling {precision}"] = (f"{value:.1f} GFLOP/s "
                                             f"({result['fraction_of_ceiling'][precision]:.0%} reached)")
    console.print(key_value_table("bench", rows))


def register(app: typer.Typer) -> None:
    app.command("bench")(domain_errors(bench))
