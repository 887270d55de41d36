"""``omniseg-rt train`` and ``omniseg-rt evaluate``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, print_json, rows_table
from omniseg_rt.errors import UsageError


def train(
    data: Annotated[Path, typer.Argument(help="Patch folder in the Omni-Seg layout, or a CSV list.")],
    out: Annotated[Path, typer.Option(help="Run directory (last.pth, best.pth and their .json).")],
    epochs: Annotated[int, typer.Option(help="Epochs (poly decay runs over them).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Patches per batch (one tissue per batch).")] = 4,
    recipe: Annotated[str, typer.Option(
        help="omniseg-rt (every tissue's head keeps learning; see DEVELOPERS.md) or original (the paper's code). "
             "The options below override its choices.")] = "omniseg-rt",
    optimizer: Annotated[Optional[str], typer.Option(
        help="sgd (momentum 0.99, Nesterov) or adam (AdamW). Default: the recipe's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Initial learning rate (poly decay). Default: the recipe's.")] = None,
    controller_lr_scale: Annotated[Optional[float], typer.Option(
        help="The controller's learning rate as a share of --lr. Default: the recipe's (0.2; original 1).")] = None,
    head_init: Annotated[Optional[str], typer.Option(
        help="live (heads start as He-initialised MLPs) or default (PyTorch's). Default: the recipe's.")] = None,
    keep_other_tissues: Annotated[Optional[bool], typer.Option(
        "--keep-other-tissues/--move-other-tissues",
        help="Leave the controller parts of tissues not in a batch untouched by the optimizer's momentum. "
             "Default: the recipe's (kept; original: moved).")] = None,
    balanced_loss: Annotated[Optional[bool], typer.Option(
        "--balanced-loss/--plain-loss",
        help="Weigh foreground and background pixels half each in the BCE term. Default: the recipe's "
             "(balanced; original: plain).")] = None,
    select: Annotated[Optional[str], typer.Option(
        help="Best epoch by the harmonic or the plain mean of per-tissue validation Dice. Default: the recipe's.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of patches for validation, split by source image.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of split, sampler, initialisation and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision (CUDA).")] = False,
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
    family: Annotated[str, typer.Option(help="scale (scale-aware) or midl.")] = "scale",
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint.")] = None,
    augment: Annotated[bool, typer.Option(help="Geometric, colour and noise augmentation.")] = True,
    scale_jitter: Annotated[float, typer.Option(
        help="Zoom patches by a factor within 1 +- this in augmentation (0: the original 0.75-1.5).")] = 0.0,
    exclusion: Annotated[Optional[float], typer.Option(
        help="Weight of the exclusion term: a patch's labelled tissue is background for the tissues it cannot "
             "be at its magnification (DT, PT and VES exclude one another). 0: off. Default: the recipe's.")] = None,
    stain_jitter: Annotated[float, typer.Option(
        help="Also jitter the stains (haematoxylin, eosin, DAB densities scaled and shifted by up to this; "
             "0: off, 0.05 light, 0.2 strong).")] = 0.0,
    consistency: Annotated[float, typer.Option(
        help="Weight of a term asking a random crop of each patch to predict what the whole patch predicts "
             "on the same pixels (steadier across overlapping slide windows). 0: off.")] = 0.0,
    consistency_for: Annotated[Optional[list[str]], typer.Option(
        help="TISSUE=W: that tissue's weight of the consistency term instead of --consistency's "
             "(repeatable, e.g. --consistency 24 --consistency-for VES=8: a strong term costs sparse "
             "tissues the fit to their patches).")] = None,
    context: Annotated[float, typer.Option(
        help="Weight of the loss of each patch seen again inside other tissue (a canvas 128 px wider, the "
             "batch's next patch around it): heads that keep their answer whatever surrounds a window "
             "(steadier slide masks). 0: off.")] = 0.0,
    ema: Annotated[float, typer.Option(
        help="Validate and save a moving average of the weights, updated after every step with this decay "
             "(0: off; 0.995 averages over about 200 steps). Steadier on small data.")] = 0.0,
    patience: Annotated[int, typer.Option(
        help="Stop after this many epochs without a better validation Dice (0: run all epochs).")] = 0,
    repeat: Annotated[Optional[list[str]], typer.Option(
        help="TISSUE=N: draw that tissue's patches N times per epoch, for tissues that lag behind "
             "(repeatable, e.g. --repeat DT=3 --repeat VES=3).")] = None,
    heads_only: Annotated[Optional[str], typer.Option(
        help="TISSUES (e.g. VES,PTC): with --init, train only these tissues' own part of the controller on "
             "their patches; the backbone and the other tissues' heads stay bit-identical (fit sparse "
             "tissues without moving the rest).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
) -> None:
    """Train Omni-Seg on partially labelled patches (each labelled for one tissue)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from omniseg_rt.train.trainer import TrainConfig
    from omniseg_rt.train.trainer import train as run

    config = TrainConfig.from_recipe(
        recipe, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        controller_lr_scale=controller_lr_scale, head_init=head_init, keep_other_tissues=keep_other_tissues,
        balanced_loss=balanced_loss,
        select=select, val_fraction=val_fraction,
        seed=seed, device=device, amp=amp, workers=workers, family=family, init=str(init) if init else None,
        augment=augment, scale_jitter=scale_jitter, exclusion=exclusion, stain_jitter=stain_jitter,
        consistency=consistency, consistency_for=_weights(consistency_for or []), context=context, ema=ema, patience=patience,
        repeat=_repeats(repeat or []), heads_only=_names(heads_only))
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
                dice = ", ".join(f"{k} {v:.2f}" for k, v in event["val_dice"].items())
                fit = ", ".join(f"{k} {v:.2f}" for k, v in event.get("train_dice", {}).items())
                progress.console.print(f"epoch {event['epoch']}: loss {event['loss']:.3f}; val Dice {dice or '-'}; "
                                       f"train Dice {fit or '-'}" + ("  [green]best[/]" if event["improved"] else ""))

        try:
            summary = run(data, out, config, resume=resume, on_progress=show)
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"interrupted: {out / 'last.pth'} holds the last completed epoch; "
                          f"continue with the same command and --resume")
            raise typer.Exit(130) from None
    console.print(f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s, "
                  f"{summary['patches_per_s']:.2f} patches/s; best validation score {summary['best_score']:.3f} "
                  f"({config.select} mean of the tissues' Dice); "
                  f"checkpoints in {out}")


def _repeats(specs: list[str]) -> dict[str, int]:
    """``["DT=3", "VES=2"]`` -> ``{"DT": 3, "VES": 2}`` (tissue names checked by the trainer)."""
    return _per_tissue("--repeat", specs, _count, "TISSUE=N, e.g. --repeat DT=3")


def _weights(specs: list[str]) -> dict[str, float]:
    """``["VES=8", "PTC=4.5"]`` -> ``{"VES": 8.0, "PTC": 4.5}`` (tissue names checked by the trainer)."""
    return _per_tissue("--consistency-for", specs, float, "TISSUE=WEIGHT, e.g. --consistency-for VES=8")


def _per_tissue(option: str, specs: list[str], value: Callable[[str], Any], form: str) -> dict[str, Any]:
    """``TISSUE=VALUE`` specs -> ``{TISSUE: value(VALUE)}``; a spec ``value`` refuses (ValueError) is a
    usage error naming the option and the form expected."""
    out = {}
    for spec in specs:
        name, _, text = spec.partition("=")
        try:
            out[name.strip().upper()] = value(text)
        except ValueError:
            raise UsageError(f"{option} {spec}: write {form}") from None
    return out


def _names(text: str | None) -> list[str]:
    """``"VES, ptc"`` -> ``["VES", "PTC"]`` (tissue names checked by the trainer)."""
    return [name.strip().upper() for name in (text or "").split(",") if name.strip()]


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(text)
    return int(text)


def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled patches (Omni-Seg layout or CSV).")],
    model: Annotated[Optional[Path], typer.Option(
        help="Checkpoint, exported .onnx graph or engine directory. Default: the bundled demo model.")] = None,
    stain: Annotated[Optional[list[str]], typer.Option(help="Only these stains (repeatable).")] = None,
    split: Annotated[str, typer.Option(
        help="all patches, or the train / val side of the split omniseg-rt train makes (by source image).")] = "all",
    val_fraction: Annotated[float, typer.Option(help="With --split: the training run's --val-fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="With --split: the training run's --seed.")] = 0,
    sheet: Annotated[Optional[Path], typer.Option(
        help="Also write a picture: per tissue, patches with the reference and the predicted outlines.")] = None,
    sheet_patches: Annotated[int, typer.Option(help="Patches per tissue on the --sheet picture.")] = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-tissue foreground Dice and IoU, each patch scored for its own tissue, by stain."""
    from omniseg_rt.data import demo_model
    from omniseg_rt.evaluate import SPLITS, predictor
    from omniseg_rt.evaluate import evaluate as run

    if split not in SPLITS:
        raise UsageError(f"--split {split}: choose {', '.join(SPLITS)}")
    if sheet_patches < 1:
        raise UsageError(f"--sheet-patches {sheet_patches}: must be at least 1")
    predict, description = predictor(model if model is not None else demo_model())
    result = {"model": description, **run(data, predict, stain, split=split, val_fraction=val_fraction, seed=seed,
                                          sheet=sheet, sheet_patches=sheet_patches)}
    if json_out:
        print_json(result)
        return
    stains = sorted({s for r in result["tissues"] for s in r["by_stain"]})
    rows = [[r["abbrev"], r["patches"], f"{r['dice']:.3f}", f"{r['iou']:.3f}",
             *(f"{r['by_stain'][s]['dice']:.3f}" if s in r["by_stain"] else "" for s in stains)]
            for r in result["tissues"]]
    console.print(rows_table(f"{description}, {result['split']} patches: mean Dice {result['mean_dice']:.3f}",
                             ["tissue", "patches", "Dice", "IoU", *(f"Dice {s}" for s in stains)], rows))
    if sheet is not None:
        console.print(f"picture: {sheet}")


def register(app: typer.Typer) -> None:
    app.command("train")(domain_errors(train))
    app.command("evaluate")(domain_errors(evaluate))
