"""Why do some tissues' heads learn nothing? Train on the training patches (no augmentation, no
validation) and print, per tissue, every few epochs: the training loss, the Dice on its own
training patches, the predicted foreground fraction, and the share of live ReLUs (positive
pre-activations over all pixels) in the two hidden layers of its dynamic head.

    python tools/train_probe.py ../shared/data/kidney_patches --epochs 12              # omniseg-rt recipe
    python tools/train_probe.py ../shared/data/kidney_patches --recipe original --optimizer adam   # the collapse
    python tools/train_probe.py ../shared/data/kidney_patches --tasks 0 --epochs 30     # one tissue alone

A head whose second layer is dead on every pixel outputs a constant (background): DEVELOPERS.md,
"Training notes", has the runs that found the cause. Writes the curves as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from omniseg_rt.metrics import dice
from omniseg_rt.model import OmniSeg
from omniseg_rt.tissues import TISSUES
from omniseg_rt.train.dataset import discover, load_sample, split_by_source
from omniseg_rt.train.losses import dice_bce_loss
from omniseg_rt.train.recipe import OtherTissuesKept, head_activity, init_live_heads, param_groups
from omniseg_rt.train.sampler import TaskBatchSampler
from omniseg_rt.train.trainer import TrainConfig


def head_report(model: OmniSeg, images: torch.Tensor, masks: torch.Tensor, task: int) -> dict[str, float]:
    """Dice, predicted foreground and live ReLU shares of ``task``'s head on ``images``."""
    activity = head_activity(model, images, task, TISSUES[task].scale_id)
    pred, truth = activity["margin"] > 0, masks[:, 0] > 0
    scores = [dice(p.numpy(), t.numpy()) for p, t in zip(pred, truth)]
    return {"dice": float(np.mean(scores)), "foreground": float(pred.float().mean()),
            "live_relu_1": float(activity["live_1"]), "live_relu_2": float(activity["live_2"])}


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--recipe", default="omniseg-rt")
    parser.add_argument("--optimizer"), parser.add_argument("--lr", type=float)
    parser.add_argument("--controller-lr-scale", type=float), parser.add_argument("--head-init")
    parser.add_argument("--keep-other-tissues", type=int, choices=(0, 1))
    parser.add_argument("--balanced-loss", type=int, choices=(0, 1))
    parser.add_argument("--family", default="scale")
    parser.add_argument("--tasks", default="0,1,2,3,4,5", help="task ids to train on")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="report every this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the curves here")
    args = parser.parse_args()
    config = TrainConfig.from_recipe(args.recipe, optimizer=args.optimizer, lr=args.lr, family=args.family,
                                     controller_lr_scale=args.controller_lr_scale, head_init=args.head_init,
                                     keep_other_tissues=_flag(args.keep_other_tissues),
                                     balanced_loss=_flag(args.balanced_loss))

    torch.manual_seed(args.seed)
    found = discover(args.data)
    train_idx, _ = split_by_source(found.samples, config.val_fraction, args.seed)
    tasks = {int(t) for t in args.tasks.split(",")}
    samples = [found.samples[i] for i in train_idx if found.samples[i].task_id in tasks]
    loaded = [load_sample(s) for s in samples]
    images = torch.stack([torch.from_numpy(image) for image, _ in loaded]).float() / 255
    masks = torch.stack([torch.from_numpy(mask) for _, mask in loaded])[:, None].float()
    task_of = [s.task_id for s in samples]

    model = OmniSeg(config.family)
    if config.head_init == "live":
        init_live_heads(model, args.seed)
    groups = param_groups(model, config.lr, config.controller_lr_scale)
    optimizer = (torch.optim.AdamW(groups, lr=config.lr) if config.optimizer == "adam" else
                 torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov))
    sampler = TaskBatchSampler(task_of, config.batch_size, args.seed)
    print(f"{config.optimizer} lr {config.lr}, controller x{config.controller_lr_scale}, heads {config.head_init}, "
          f"other tissues kept: {config.keep_other_tissues}, balanced loss: {config.balanced_loss}; "
          f"{len(samples)} patches; per tissue: loss | train Dice, foreground, live ReLU layer 1, layer 2")
    curves, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch - 1)
        losses: dict[int, list[float]] = {}
        for batch in sampler:
            task = task_of[batch[0]]
            loss = dice_bce_loss(model.forward_tasks(images[batch], [task])[:, 0], masks[batch],
                                 balanced=config.balanced_loss)
            optimizer.zero_grad()
            loss.backward()
            with OtherTissuesKept(optimizer, model, task, TISSUES[task].scale_id, config.keep_other_tissues):
                optimizer.step()
            losses.setdefault(task, []).append(loss.item())
        if epoch % args.every and epoch not in (1, args.epochs):
            continue
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1), "tissues": {}}
        for task in sorted(losses):
            index = [i for i, t in enumerate(task_of) if t == task]
            report = head_report(model, images[index], masks[index], task)
            row["tissues"][TISSUES[task].abbrev] = {"loss": float(np.mean(losses[task])), **report}
        curves.append(row)
        print(f"epoch {epoch:3d} ({row['seconds']:.0f} s): " + "  ".join(
            f"{k} {v['loss']:.2f} | {v['dice']:.2f} {v['foreground']:.2f} {v['live_relu_1']:.2f} {v['live_relu_2']:.2f}"
            for k, v in row["tissues"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "config": vars(config), "curves": curves}, indent=2) + "\n")


if __name__ == "__main__":
    main()
