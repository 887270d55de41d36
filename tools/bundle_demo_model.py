"""Bundle a training run's best checkpoint as the package's demo model, with its model card.

    python tools/bundle_demo_model.py RUN_DIR --command "omniseg-rt train ..." [--data DIR]

RUN_DIR holds ``best.pth`` and ``last.pth`` (or, for a run trained on another machine, the
``history.json`` that ``tools/gpu_session.sh`` brings back with a release ``best.pth``).

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
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kidney_patches")
    args = parser.parse_args()

    meta = save_for_release(args.run / "best.pth", DEMO_MODEL)
    export_graphs(DEMO_MODEL, tissues="all", out=DEMO_GRAPH)  # the torch-free default engine's source
    if (args.run / "last.pth").is_file():
        last = torch.load(args.run / "last.pth", weights_only=True)
    else:  # a run trained elsewhere (e.g. a GPU machine) comes back as best.pth + history.json
        last = json.loads((args.run / "history.json").read_text())
    history = last["history"]
    best = max(history, key=lambda h: h["score"])
    result = evaluate(args.data, predictor(DEMO_MODEL)[0])
    card = {
        "file": DEMO_MODEL.name, "sha256": sha256_file(DEMO_MODEL), "family": meta["family"],
        "storage": "float16 weights (float32 at load)", "command": args.command,
        "data": "72 public kidney patches (Omni-Seg KI_data demo set: H&E, PAS, silver, trichrome)",
        "data_sha256": meta["data_sha256"], "train_patches": meta["train"], "val_patches": meta["val"],
        "epochs_run": len(history), "best_epoch": best["epoch"], "val_dice_best_epoch": best["val_dice"],
        "train_seconds": last.get("train_seconds", args.wall_seconds), "history": history, "recipe": meta["recipe"],
        "versions": meta["versions"], "status": args.note, "evaluate_all_patches": result,
    }
    DEMO_CARD.write_text(json.dumps(card, indent=2) + "\n")
    r = meta["recipe"]
    recipe = (f"SGD lr {r['lr']}, momentum {r['momentum']}, Nesterov" if r.get("optimizer", "sgd") == "sgd"
              else f"AdamW lr {r['lr']}")
    rows = "\n".join(
        f"| {r['abbrev']} | {best['val_dice'].get(r['abbrev'], float('nan')):.3f} | {r['dice']:.3f} | {r['iou']:.3f} |"
        for r in result["tissues"])
    (DEMO_MODEL.parent / "MODEL_CARD.md").write_text(f"""# omniseg-rt demo model

**A demonstration, not a clinical model.** It was trained on 72 kidney patches (256x256, four
stains); real use needs a model trained on thousands of annotated patches.
{chr(10) + "**Status:** " + args.note + chr(10) if args.note else ""}
- Family: {meta['family']} (Omni-Seg scale-aware controller), {sum(v.numel() for v in torch.load(DEMO_MODEL, weights_only=True)['model'].values()):,} parameters (with the four unused upstream modules), weights stored as float16.
- Data: the Omni-Seg KI_data demo patches ({meta['samples']} patches, {meta['train']} for training,
  {meta['val']} held out for validation, split by source image), data sha256 `{meta['data_sha256'][:16]}...`.
- Command: `{args.command}`
- Epochs: {len(history)} (best validation at epoch {best['epoch']}); recipe: {recipe}, poly decay
  {meta['recipe']['poly_power']}, batch {meta['recipe']['batch_size']}, augmentation {'on' if meta['recipe']['augment'] else 'off'}.
- Wall time: {card['train_seconds'] / 60:.1f} minutes on {meta.get('hardware', 'a 2-core CPU')} ({card['train_seconds'] / max(1, len(history)):.0f} s per epoch).

| tissue | validation Dice (held-out, best epoch) | Dice on all 72 patches | IoU on all 72 patches |
|---|---|---|---|
{rows}

The "all 72 patches" columns include the patches the model was trained on: they show what
`omniseg-rt evaluate` reproduces, not how well the model generalises. The held-out column is the
honest one, on {meta['val']} patches.
""")
    print(json.dumps({"val_dice": best["val_dice"], "all_patches_mean_dice": result["mean_dice"]}, indent=2))


if __name__ == "__main__":
    main()
