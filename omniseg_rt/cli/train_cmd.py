"""``omniseg-rt train`` and ``omniseg-rt evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, print_json, rows_table


def train(
    data: Annotated[Path, typer.Argument(help="Patch folder in the Omni-Seg layout, or a CSV list.")],
    out: Annotated[Path, typer.Option(help="Run directory (last.pth, best.pth and their .json).")],
    epochs: Annotated[int, typer.Option(help="Epochs (poly decay runs over them).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Patches per batch (one tissue per batch).")] = 4,
    optimizer: Annotated[str, typer.Option(help="sgd (original: momentum 0.99, Nesterov) or adam (AdamW).")] = "sgd",
    lr: Annotated[float, typer.Option(help="Initial learning rate (poly decay).")] = 1e-3,
    val_fraction: Annotated[float, typer.Option(help="Share of patches for validation, split by source image.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of split, sampler, initialisation and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision (CUDA).")] = False,
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    family: Annotated[str, typer.Option(help="scale (scale-aware) or midl.")] = "scale",
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint.")] = None,
    augment: Annotated[bool, typer.Option(help="Geometric, colour and noise augmentation.")] = True,
    patience: Annotated[int, typer.Option(
        help="Stop after this many epochs without a better validation Dice (0: run all epochs).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
) -> None:
    """Train Omni-Seg on partially labelled patches (each labelled for one tissue)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from omniseg_rt.train.trainer import TrainConfig
    from omniseg_rt.train.trainer import train as run

    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, val_fraction=val_fraction, seed=seed,
                         device=device, amp=amp, workers=workers, family=family,
                         init=str(init) if init else None, augment=augment,
                         patience=patience)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("epoch", total=None, info="")

        def show(event: dict) -> None:
            if event["event"] == "step":
                progress.update(bar, description=f"epoch {event['epoch']}/{event['epochs']}",
                                total=event["steps"], completed=event["step"],
                                info=f"loss {event['loss']:.3f}  {event['patches_per_s']:.1f} patches/s")
            elif event["event"] == "stopped":
                progress.console.print(f"no better validation Dice for {event['patience']} epochs: stopping")
            else:
                dice = ", ".join(f"{k} {v:.3f}" for k, v in event["val_dice"].items())
                progress.console.print(f"epoch {event['epoch']}: loss {event['loss']:.3f}; val Dice {dice or '-'}"
                                       + ("  [green]best[/]" if event["improved"] else ""))

        try:
            summary = run(data, out, config, resume=resume, on_progress=show)
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"interrupted: {out / 'last.pth'} holds the last completed epoch; "
                          f"continue with the same command and --resume")
            raise typer.Exit(130) from None
    console.print(f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s, "
                  f"{summary['patches_per_s']:.2f} patches/s; best mean val Dice {summary['best_score']:.3f}; "
                  f"checkpoints in {out}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled patches (Omni-Seg layout or CSV).")],
    model: Annotated[Optional[Path], typer.Option(
        help="Checkpoint, exported .onnx graph or engine directory. Default: the bundled demo model.")] = None,
    stain: Annotated[Optional[list[str]], typer.Option(help="Only these stains (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-tissue foreground Dice and IoU, each patch scored for its own tissue, by stain."""
    from omniseg_rt.data import demo_model
    from omniseg_rt.evaluate import evaluate as run
    from omniseg_rt.evaluate import predictor

    predict, description = predictor(model if model is not None else demo_model())
    result = {"model": description, **run(data, predict, stain)}
    if json_out:
        print_json(result)
        return
    stains = sorted({s for r in result["tissues"] for s in r["by_stain"]})
    rows = [[r["abbrev"], r["patches"], f"{r['dice']:.3f}", f"{r['iou']:.3f}",
             *(f"{r['by_stain'][s]['dice']:.3f}" if s in r["by_stain"] else "" for s in stains)]
            for r in result["tissues"]]
    console.print(rows_table(f"{description}: mean Dice {result['mean_dice']:.3f}",
                             ["tissue", "patches", "Dice", "IoU", *(f"Dice {s}" for s in stains)], rows))


def register(app: typer.Typer) -> None:
    app.command("train")(domain_errors(train))
    app.command("evaluate")(domain_errors(evaluate))
