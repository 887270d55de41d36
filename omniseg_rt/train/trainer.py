"""``train``: Omni-Seg from partially labelled patches, resumable, with per-tissue validation."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.model import OmniSeg, load_checkpoint
from omniseg_rt.tissues import TISSUES
from omniseg_rt.train.augment import augment, build_augmentation
from omniseg_rt.train.checkpoints import data_hash, load_training_state, save_checkpoint, versions
from omniseg_rt.train.dataset import Sample, discover, load_sample, split_by_source
from omniseg_rt.train.losses import dice_bce_loss
from omniseg_rt.train.sampler import TaskBatchSampler

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The training recipe. Defaults are the original's (SGD 1e-3, momentum 0.99, Nesterov,
    poly decay 0.9, batches of 4 patches of one tissue)."""

    epochs: int = 100
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 0.0
    poly_power: float = 0.9
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    workers: int = 0
    family: str = "scale"
    init: str | None = None
    augment: bool = True
    patience: int = 0  # stop after this many epochs without a better validation score (0: never)


class PatchDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image, mask = load_sample(self.samples[i])
        return torch.from_numpy(image), torch.from_numpy(mask)[None], self.samples[i].task_id


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda: torch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise InvalidInputError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


@torch.no_grad()
def _hardware(device: torch.device) -> str:
    """What the run trains on, for the model card: the GPU's name, or the CPU's cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"a {os.cpu_count()}-core {platform.machine()} CPU"


def _epochs_since_best(history: list[dict]) -> int:
    """Epochs run after the one with the best score (0 when the last epoch is the best)."""
    scores = [h["score"] for h in history]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


def validate(model: OmniSeg, samples: list[Sample], device: torch.device) -> dict[str, float]:
    """Mean foreground Dice per tissue abbreviation, each patch scored for its own tissue only."""
    model.eval()
    scores: dict[str, list[float]] = {}
    for s in samples:
        image, mask = load_sample(s)
        x = torch.from_numpy(image)[None].to(device).float() / 255.0
        logits = model.forward_tasks(x, [s.task_id])[0, 0]
        pred = (logits[1] > logits[0]).cpu().numpy()
        total = pred.sum() + mask.sum()
        scores.setdefault(TISSUES[s.task_id].abbrev, []).append(
            1.0 if total == 0 else 2.0 * np.logical_and(pred, mask).sum() / total)
    return {k: float(np.mean(v)) for k, v in sorted(scores.items(), key=lambda kv: kv[0])}


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    resume: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train on ``data`` (folder layout or CSV) into ``out`` (``last.pth``, ``best.pth`` + sidecars).

    Returns a summary (epochs, best score, per-tissue validation Dice, seconds, patches/s).
    Ctrl-C keeps the last completed epoch's checkpoint (written atomically); ``resume=True``
    continues from it exactly: weights, optimizer, scheduler, epoch and RNG.
    """
    notify = on_progress or (lambda event: None)
    out = Path(out)
    found = discover(data)
    samples = found.samples
    train_idx, val_idx = split_by_source(samples, config.val_fraction, config.seed)
    device = _device(config.device)
    last = out / "last.pth"
    if resume and not last.is_file():
        raise InvalidInputError(f"{last}: nothing to resume (no last.pth in {out}); start without --resume")
    if not resume and last.is_file():
        raise InvalidInputError(f"{out}: already holds a run (last.pth); use --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = load_checkpoint(config.init) if config.init else OmniSeg(config.family)
    if model.family != config.family:
        raise InvalidInputError(f"--init {config.init} is a {model.family} checkpoint, the run trains {config.family}")
    model = model.to(device=device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise InvalidInputError(f"--optimizer {config.optimizer}: choose sgd (the original recipe) or adam")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: max(0.0, 1.0 - e / config.epochs) ** config.poly_power)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    sampler = TaskBatchSampler([samples[i].task_id for i in train_idx], config.batch_size, config.seed)
    loader = torch.utils.data.DataLoader(PatchDataset([samples[i] for i in train_idx]), batch_sampler=sampler,
                                         num_workers=config.workers)
    aug = build_augmentation() if config.augment else None
    meta = {
        "tissues": [t.task_id for t in TISSUES], "family": config.family, "data": str(data),
        "data_sha256": data_hash(samples), "samples": len(samples), "train": len(train_idx), "val": len(val_idx),
        "skipped": dict(found.skipped), "recipe": asdict(config), "versions": versions(),
        "hardware": _hardware(device),
    }
    start_epoch, best, history, spent = 0, -1.0, [], 0.0
    if resume:
        state = load_training_state(last)
        if state["omniseg_rt"]["data_sha256"] != meta["data_sha256"]:
            raise InvalidInputError(f"{last}: was trained on other data (data sha256 differs); resume needs the same data")
        model.load_state_dict({k: v for k, v in state["model"].items() if k in model.state_dict()})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        start_epoch, best, history = state["epoch"], state["best_score"], state["history"]
        spent = float(state.get("train_seconds", 0.0))
        log.info("resuming %s at epoch %d", out, start_epoch)

    def save(path: Path, epoch: int, metrics: dict) -> None:
        save_checkpoint(path, model, {**meta, "epoch": epoch, "metrics": metrics}, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), epoch=epoch, rng_torch=torch.get_rng_state(),
                        best_score=best, history=history, train_seconds=spent + time.perf_counter() - begin)

    begin, seen = time.perf_counter(), 0
    if start_epoch == 0:
        save(last, 0, {})  # a resumable state exists from the start, even if epoch 1 is interrupted
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for step, (images, masks, tasks) in enumerate(loader):
            x = images.to(device, non_blocking=True).float() / 255.0
            m = masks.to(device, non_blocking=True).float()
            if aug is not None:
                x, m = augment(aug, x, m)
            with torch.autocast(device.type, enabled=scaler.is_enabled()):
                logits = model.forward_tasks(x, [int(tasks[0])])[:, 0]
            loss = dice_bce_loss(logits.float(), m)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            seen += len(images)
            notify({"event": "step", "epoch": epoch + 1, "epochs": config.epochs, "step": step + 1,
                    "steps": len(sampler), "loss": losses[-1],
                    "patches_per_s": seen / (time.perf_counter() - begin)})
        scheduler.step()
        metrics = validate(model, [samples[i] for i in val_idx], device) if val_idx else {}
        score = float(np.mean(list(metrics.values()))) if metrics else -float(np.mean(losses))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": metrics, "score": score})
        improved = score > best
        if improved:
            best = score
        save(last, epoch + 1, metrics)
        if improved:
            save(out / "best.pth", epoch + 1, metrics)
        notify({"event": "epoch", **history[-1], "best": best, "improved": improved})
        if config.patience and _epochs_since_best(history) >= config.patience:
            log.info("validation score has not improved for %d epochs: stopping at epoch %d", config.patience, epoch + 1)
            notify({"event": "stopped", "epoch": epoch + 1, "patience": config.patience})
            break
    seconds = time.perf_counter() - begin
    final = history[-1] if history else {}
    return {"out": str(out), "epochs": len(history), "best_score": best, "last": final, "seconds": seconds,
            "patches_per_s": seen / seconds if seconds else 0.0, "samples": len(samples),
            "train": len(train_idx), "val": len(val_idx), "skipped": dict(found.skipped)}
