"""``omniseg-rt calibrate``: a calibration set of real tissue windows for INT8 engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, rows_table


def calibrate(
    sources: Annotated[list[Path], typer.Argument(help="Slides, slide folders and/or Omni-Seg patch folders.")],
    out: Annotated[Path, typer.Option(help="Where the set goes (.npz per scale group + manifest.json).")] = Path(
        "calibration/default"),
    tiles_per_group: Annotated[int, typer.Option(help="Windows per scale group (a quarter is held out).")] = 256,
    window: Annotated[int, typer.Option(help="Window side in pixels (the engine's).")] = 512,
    mpp: Annotated[Optional[float], typer.Option(help="Pixel size for slides that lack one (um/px).")] = None,
    seed: Annotated[int, typer.Option(help="Same sources and seed, same set.")] = 0,
) -> None:
    """Sample real tissue windows per scale group (each at its own magnification) for INT8 calibration."""
    from omniseg_rt.calibration.sampling import calibrate as run

    with console.status("sampling calibration windows") as status:
        path, manifest = run(sources, out, tiles_per_group=tiles_per_group, window=window, seed=seed, mpp=mpp,
                             on_progress=lambda message: status.update(message))
    rows = [(group, e["calibration"]["count"], e["holdout"]["count"], e["calibration"]["file"])
            for group, e in manifest["groups"].items()]
    console.print(rows_table(f"calibration set {path}", ("group", "calibration", "held out", "file"), rows))
    console.print(f"next: omniseg-rt build MODEL --precision int8 --calibration {path}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(domain_errors(calibrate))
