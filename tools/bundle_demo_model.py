"""Bundle a training run's best (or last) checkpoint as the package's demo model, with its model card.

    python tools/bundle_demo_model.py RUN_DIR --command "omniseg-rt train ..." [--data DIR] [--checkpoint last]

RUN_DIR holds ``best.pth`` and ``last.pth`` (or, for a run trained on another machine, the
``history.json`` that ``tools/gpu_train_session.sh`` brings back with release checkpoints).

Writes ``omniseg_rt/data/demo_model.pth`` (float16 weights, original layout + metadata),
``demo_model_all.onnx`` + ``.json`` (the all-tissue graph segment's default engine is built from),
``demo_model.json`` (training summary, validation Dice per tissue, evaluation on the data) and
``MODEL_CARD.md``. The evaluation figures are what ``omniseg-rt evaluate DATA`` prints for the
bundled model; a test checks that they are reproduced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omniseg_rt.data import DEMO_CARD, DEMO_GRAPH, DEMO_MODEL
from omniseg_rt.export import export_graphs
from omniseg_rt.evaluate import evaluate, predictor
from omniseg_rt.fileutil import sha256_file
from omniseg_rt.train.checkpoints import save_for_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--command", required=True, help="the exact training command, for the card")
    parser.add_argument("--note", default="", help="a status line for the card (e.g. still improving)")
    parser.add_argument("--wall-seconds", type=float, default=None, help="training wall time, if the run lacks it")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best: the epoch with the best validation score; last: the end of the schedule")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kidney_patches")
    args = parser.parse_args()

    meta = save_for_release(args.run / f"{args.checkpoint}.pth", DEMO_MODEL)
    export_graphs(DEMO_MODEL, tissues="all", out=DEMO_GRAPH)  # the torch-free default engine's source
    last = torch.load(args.run / "last.pth", weights_only=True) if (args.run / "last.pth").is_file() else {}
    if "history" not in last:  # a run trained elsewhere (a GPU machine) comes back as release checkpoints + history.json
        last = json.loads((args.run / "history.json").read_text())
    history = last["history"]
    best = max(history, key=lambda h: h["score"]) if args.checkpoint == "best" else history[-1]
    # a run continued from other runs' checkpoints (--init, perhaps in turn continued): count their epochs and time too
    init = meta["recipe"].get("init")
    earlier_epochs, earlier_seconds = _earlier_runs(init)
    chosen = (f"best validation at epoch {earlier_epochs + best['epoch']}" if args.checkpoint == "best"
              else f"the last epoch's weights, {earlier_epochs + best['epoch']}")
    predict = predictor(DEMO_MODEL)[0]
    recipe = meta["recipe"]
    result = evaluate(args.data, predict)
    sides = {side: evaluate(args.data, predict, split=side, val_fraction=recipe["val_fraction"], seed=recipe["seed"])
             for side in ("train", "val")}
    card = {
        "file": DEMO_MODEL.name, "sha256": sha256_file(DEMO_MODEL), "family": meta["family"],
        "storage": "float16 weights (float32 at load)", "command": args.command,
        "data": "72 public kidney patches (Omni-Seg KI_data demo set: H&E, PAS, silver, trichrome)",
        "data_sha256": meta["data_sha256"], "train_patches": meta["train"], "val_patches": meta["val"],
        "epochs_run": len(history), "checkpoint": args.checkpoint, "bundled_epoch": best["epoch"],
        "val_dice_bundled_epoch": best["val_dice"],
        "train_seconds": last.get("train_seconds", args.wall_seconds) + earlier_seconds, "history": history,
        "continued_from": {"checkpoint": init, "epochs": earlier_epochs, "train_seconds": earlier_seconds}
        if earlier_epochs else None, "recipe": meta["recipe"],
        "versions": meta["versions"], "hardware": meta.get("hardware"), "status": args.note,
        "evaluate_all_patches": result, "evaluate_train_patches": sides["train"],
        "evaluate_val_patches": sides["val"],
    }
    DEMO_CARD.write_text(json.dumps(card, indent=2) + "\n")
    r = recipe
    recipe_text = (f"SGD lr {r['lr']}, momentum {r['momentum']}, Nesterov" if r.get("optimizer", "sgd") == "sgd"
                   else f"AdamW lr {r['lr']}")
    recipe_text += (f", controller at {r.get('controller_lr_scale', 1.0)} x lr, heads initialised "
                    f"{r.get('head_init', 'default')}, other tissues {'kept' if r.get('keep_other_tissues') else 'moved'}"
                    f" in each step, BCE {'balanced between foreground and background' if r.get('balanced_loss') else 'plain'}"
                    f", best epoch by the {r.get('select', 'mean')} mean of the tissues' Dice")
    if r.get("consistency") or r.get("consistency_for"):
        recipe_text += f", crop-vs-whole consistency term weight {r.get('consistency', 0.0)}"
        recipe_text += "".join(f", {name} {w}" for name, w in r.get("consistency_for", {}).items())
    if r.get("ema"):
        recipe_text += f", weights averaged (EMA decay {r['ema']})"
    if r.get("heads_only"):
        recipe_text += (f", only {' and '.join(r['heads_only'])}'s own controller columns trained, on "
                        "their patches (every other weight frozen: --heads-only)")
    epochs_text = (f"{earlier_epochs + len(history)} ({earlier_epochs} in the runs up to `{init}`, then "
                   f"{len(history)} in this one; {chosen})" if earlier_epochs else f"{len(history)} ({chosen})")
    by = {side: {row["abbrev"]: row for row in sides[side]["tissues"]} for side in sides}
    rows = "\n".join(
        f"| {r['abbrev']} | {by['val'][r['abbrev']]['dice']:.3f} | {by['train'][r['abbrev']]['dice']:.3f} | "
        f"{r['dice']:.3f} | {r['iou']:.3f} |" for r in result["tissues"])
    (DEMO_MODEL.parent / "MODEL_CARD.md").write_text(f"""# omniseg-rt demo model

**A demonstration, not a clinical model.** It was trained on {meta['train']} of {meta['samples']} kidney patches (256x256, four
stains); real use needs a model trained on thousands of annotated patches.
{chr(10) + "**Status:** " + args.note + chr(10) if args.note else ""}
- Family: {meta['family']} (Omni-Seg scale-aware controller), {sum(v.numel() for v in torch.load(DEMO_MODEL, weights_only=True)['model'].values()):,} parameters (with the four unused upstream modules), weights stored as float16.
- Data: the Omni-Seg KI_data demo patches ({meta['samples']} patches, {meta['train']} for training,
  {meta['val']} held out for validation, split by source image), data sha256 `{meta['data_sha256'][:16]}...`.
- Command: `{args.command}`
- Epochs: {epochs_text}; recipe: {recipe_text}, poly decay
  {meta['recipe']['poly_power']}, batch {meta['recipe']['batch_size']}, augmentation {'on' if meta['recipe']['augment'] else 'off'}.
- Wall time: {card['train_seconds'] / 60:.1f} minutes on {meta.get('hardware', 'a 2-core CPU')} ({card['train_seconds'] / max(1, earlier_epochs + len(history)):.0f} s per epoch).

| tissue | Dice, {meta['val']} held-out patches | Dice, {meta['train']} training patches | Dice, all 72 | IoU, all 72 |
|---|---|---|---|---|
{rows}

Why this recipe: trained as the original Omni-Seg code does, four of the six heads of the first
demo model predicted no foreground at all, even on their training patches. Each batch holds one
tissue, yet Adam moved the other five tissues' part of the controller on the momentum of earlier
batches; the controller's steps were about a hundred times an ordinary weight's; the generated
heads started as near-constant functions and their ReLUs died within three epochs; and the
background-dominated BCE held sparse tissues (capillaries, distal tubules) below the threshold
although their heads already ranked the pixels. The recipe fixes each (DEVELOPERS.md, "Training
notes", has the experiments); `omniseg-rt train --recipe original` trains as the paper's code did.

`omniseg-rt evaluate DATA --split val` (and `--split train`, or all patches without it) gives
these figures. The held-out column is the honest one, on 1 to 4 patches per tissue: it says
whether a tissue is found at all on images the model has not seen, not how well; the training
column says whether each head fits what it saw. 72 patches are enough to show every head at
work and to try the pipeline; they are not enough for masks to rely on.
""")
    print(json.dumps({"val_dice": best["val_dice"], "all_patches_mean_dice": result["mean_dice"]}, indent=2))


def _earlier_runs(init: str | None) -> tuple[int, float]:
    """Epochs and training seconds of the chain of runs that ``init`` ends (each run's
    checkpoint records the ``--init`` it started from)."""
    epochs, seconds, seen = 0, 0.0, set()
    while init and Path(init).is_file() and init not in seen:
        seen.add(init)
        state = torch.load(init, weights_only=True)
        epochs += len(state.get("history", []))
        seconds += float(state.get("train_seconds", 0.0))
        init = state.get("omniseg_rt", {}).get("recipe", {}).get("init")
    return epochs, seconds


if __name__ == "__main__":
    main()
