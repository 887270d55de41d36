"""``train``: Omni-Seg from partially labelled patches, resumable, with per-tissue validation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.metrics import dice
from omniseg_rt.model import OmniSeg, load_checkpoint, margins
from omniseg_rt.tissues import TISSUES, tissue
from omniseg_rt.train.averaging import WeightAverage, check_decay
from omniseg_rt.train.augment import ORIGINAL_SCALE, augment, build_augmentation
from omniseg_rt.train.checkpoints import data_hash, load_training_state, save_checkpoint, versions
from omniseg_rt.train.dataset import Sample, discover, load_sample, split_by_source
from omniseg_rt.train.losses import consistency_loss, context_crop, dice_bce_loss, exclusion_loss, in_context
from omniseg_rt.train.recipe import (RECIPES, OtherTissuesKept, exclusive_tissues, init_live_heads, param_groups,
                                     selection_score)
from omniseg_rt.train.sampler import TaskBatchSampler

log = logging.getLogger(__name__)
FIT_PROBE_PATCHES = 8  # training patches per tissue scored (without augmentation) after every epoch


@dataclass
class TrainConfig:
    """The training recipe. Defaults are omniseg-rt's (``recipe.RECIPES["omniseg-rt"]``: AdamW
    1e-3 with the controller at 0.2 of it, heads initialised alive, other tissues kept out of each
    batch's step, checkpoints selected by the harmonic mean of the per-tissue validation Dice);
    ``from_recipe("original", ...)`` gives the paper's (SGD 1e-3, momentum 0.99, Nesterov, default
    initialisation, every step moving every tissue, mean Dice). Both: poly decay 0.9, batches of
    4 patches of one tissue."""

    epochs: int = 100
    batch_size: int = 4
    optimizer: str = "adam"
    lr: float = 1e-3
    controller_lr_scale: float = 0.2
    head_init: str = "live"
    keep_other_tissues: bool = True
    balanced_loss: bool = True
    select: str = "harmonic"
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
    scale_jitter: float = 0.0  # zoom by U(1 - s, 1 + s) in augmentation (0: the original 0.75-1.5)
    exclusion: float = 0.0  # weight of the exclusion term (losses.exclusion_loss; 0: off)
    stain_jitter: float = 0.0  # HED stain augmentation strength (0: off; augment.hed_jitter)
    consistency: float = 0.0  # weight of the crop-vs-whole agreement term (losses.consistency_loss; 0: off)
    consistency_for: dict[str, float] = field(default_factory=dict)  # tissue abbreviation -> its own weight
    context: float = 0.0  # weight of the loss of each patch inside other tissue (losses.in_context; 0: off)
    context_margin: int = 128  # px of other tissue the context canvas adds to a patch's side
    ema: float = 0.0  # per-step decay of the weights' moving average, validated and saved (0: off; averaging.py)
    patience: int = 0  # stop after this many epochs without a better validation score (0: never)
    repeat: dict[str, int] = field(default_factory=dict)  # tissue abbreviation -> passes over its patches per epoch
    heads_only: list[str] = field(default_factory=list)  # tissue abbreviations: train only their own controller parts

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named recipe (``omniseg-rt`` or ``original``) with ``overrides`` (None: keep) laid over it."""
        if name not in RECIPES:
            raise InvalidInputError(f"--recipe {name}: choose {' or '.join(RECIPES)}")
        return cls(**{**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}})


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
    """What the run trains on, for the model card: the GPU's name, or the CPU's name, cores and
    the vector extensions that decide its speed."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from omniseg_rt.hardware import cpu_summary

    cpu = cpu_summary()
    flags = f"; {', '.join(cpu['flags'])}" if cpu["flags"] else ""
    return f"{cpu['name']} ({cpu['cores']} cores, {cpu['machine']}{flags})"


def parse_repeats(repeat: dict[str, int]) -> dict[int, int]:
    """``{"DT": 3}`` -> ``{0: 3}``; an unknown tissue or a count below 1 is an error naming it."""
    out = {}
    for name, count in repeat.items():
        if int(count) < 1:
            raise InvalidInputError(f"--repeat {name}={count}: a tissue's passes per epoch must be at least 1")
        out[tissue(name).task_id] = int(count)
    return out


def _heads_only(config: TrainConfig) -> tuple[int, ...] | None:
    """``--heads-only``'s task ids (None: off), checked before any work: it needs ``--init`` (the
    trained network whose other parts it keeps) and refuses weight decay and the exclusion term,
    which would move frozen weights or other tissues' heads."""
    if not config.heads_only:
        return None
    names = ", ".join(config.heads_only)
    if not config.init:
        raise InvalidInputError(f"--heads-only {names}: needs --init CHECKPOINT, the trained network whose other "
                                "parts it keeps")
    if config.weight_decay:
        raise InvalidInputError(f"--heads-only {names}: weight decay would move the frozen columns; use 0")
    if config.exclusion:
        raise InvalidInputError(f"--heads-only {names}: the exclusion term trains other tissues' heads; use 0")
    return tuple(sorted({tissue(name).task_id for name in config.heads_only}))


def _freeze_all_but_heads(model: OmniSeg, tasks: tuple[int, ...]) -> None:
    """Freeze every weight but the controller columns that belong to ``tasks`` alone (the
    scale-aware family's 256 x 162 map per tissue; the MIDL family's one-hot column): the backbone
    and every other tissue's head stay bit-identical."""
    from omniseg_rt.train.recipe import own_columns

    mine = own_columns(model, tasks)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weight = model.controller_conv.weight
    weight.requires_grad_(True)
    keep = mine.to(weight.device, weight.dtype).view(1, -1, *([1] * (weight.dim() - 2)))
    weight.register_hook(lambda grad: grad * keep)  # zero gradient (so zero Adam steps) elsewhere


def _epochs_since_best(history: list[dict]) -> int:
    """Epochs run after the one with the best score (0 when the last epoch is the best)."""
    scores = [h["score"] for h in history]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


@torch.no_grad()
def validate(model: OmniSeg, samples: list[Sample], device: torch.device) -> dict[str, float]:
    """Mean foreground Dice per tissue abbreviation, each patch scored for its own tissue only
    (no augmentation; also used on a fixed subset of the training patches)."""
    model.eval()
    scores: dict[str, list[float]] = {}
    for s in samples:
        image, mask = load_sample(s)
        x = torch.from_numpy(image)[None].to(device).float() / 255.0
        logits = model.forward_tasks(x, [s.task_id])[0, 0]
        pred = (margins(logits) > 0).cpu().numpy()
        scores.setdefault(TISSUES[s.task_id].abbrev, []).append(dice(pred, mask))
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

    if config.head_init not in ("live", "default"):
        raise InvalidInputError(f"--head-init {config.head_init}: choose live or default")
    selection_score({}, config.select)  # a bad --select fails here, before any work
    repeats = parse_repeats(config.repeat)
    tuned = _heads_only(config)
    if not 0 <= config.scale_jitter < 1:
        raise InvalidInputError(f"--scale-jitter {config.scale_jitter}: a zoom range 1 +- s needs 0 <= s < 1 (e.g. 0.1)")
    for option, weight in ((f"--exclusion {config.exclusion}", config.exclusion),
                           (f"--consistency {config.consistency}", config.consistency),
                           (f"--context {config.context}", config.context),
                           *((f"--consistency-for {name}={w}", w) for name, w in config.consistency_for.items())):
        if not weight >= 0:
            raise InvalidInputError(f"{option}: a loss weight must be >= 0 (0: off)")
    if config.context and (config.context_margin <= 0 or config.context_margin % 16):
        raise InvalidInputError(f"context margin {config.context_margin}: a positive multiple of 16 px (the backbone's grid)")
    # task id -> the consistency term's weight; an unknown tissue is an error naming it, before any work
    own = {tissue(name).task_id: weight for name, weight in config.consistency_for.items()}
    consistency = {t.task_id: own.get(t.task_id, config.consistency) for t in TISSUES}
    check_decay(config.ema)
    torch.manual_seed(config.seed)
    model = load_checkpoint(config.init) if config.init else OmniSeg(config.family)
    if model.family != config.family:
        raise InvalidInputError(f"--init {config.init} is a {model.family} checkpoint, the run trains {config.family}")
    if config.head_init == "live" and not config.init:
        init_live_heads(model, config.seed)
    model = model.to(device=device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    if tuned is not None:
        _freeze_all_but_heads(model, tuned)
    groups = param_groups(model, config.lr, config.controller_lr_scale)  # frozen weights get no gradient: no step
    # the patches the steps see: with --heads-only, only the tuned tissues' carry a gradient
    step_idx = [i for i in train_idx if tuned is None or samples[i].task_id in tuned]
    if tuned is not None and not step_idx:
        raise InvalidInputError(f"--heads-only {', '.join(config.heads_only)}: {data} has no training patches "
                                "of these tissues")
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise InvalidInputError(f"--optimizer {config.optimizer}: choose sgd (the original recipe) or adam")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: max(0.0, 1.0 - e / config.epochs) ** config.poly_power)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    sampler = TaskBatchSampler([samples[i].task_id for i in step_idx], config.batch_size, config.seed, repeats)
    loader = torch.utils.data.DataLoader(PatchDataset([samples[i] for i in step_idx]), batch_sampler=sampler,
                                         num_workers=config.workers)
    zoom = (1 - config.scale_jitter, 1 + config.scale_jitter) if config.scale_jitter else ORIGINAL_SCALE
    aug = build_augmentation(zoom) if config.augment else None
    # a fixed handful of training patches per tissue, scored every epoch: does each head fit what it sees?
    fit_probe = [samples[i] for t in sorted({samples[i].task_id for i in train_idx})
                 for i in [j for j in train_idx if samples[j].task_id == t][:FIT_PROBE_PATCHES]]
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
        weights = state.get("raw_model", state["model"])  # a run with --ema saved its averaged weights as "model"
        model.load_state_dict({k: v for k, v in weights.items() if k in model.state_dict()})
        if len(state["optimizer"]["param_groups"]) != len(optimizer.param_groups):
            raise InvalidInputError(f"{last}: made by an older omniseg-rt (one optimizer group); start a new run")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        start_epoch, best, history = state["epoch"], state["best_score"], state["history"]
        spent = float(state.get("train_seconds", 0.0))
        log.info("resuming %s at epoch %d", out, start_epoch)
    average = WeightAverage(model, config.ema, state.get("ema_weights") if resume else None) if config.ema else None
    averaged = (lambda: average.applied(model)) if average else nullcontext

    def save(path: Path, epoch: int, metrics: dict) -> None:
        with averaged() as raw:  # the averaged weights are the model; the raw ones carry on training
            extra = {"raw_model": {k: v.cpu() for k, v in raw.items()}, "ema_weights": average.state()} if raw else {}
            save_checkpoint(path, model, {**meta, "epoch": epoch, "metrics": metrics}, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), epoch=epoch, rng_torch=torch.get_rng_state(),
                            best_score=best, history=history, train_seconds=spent + time.perf_counter() - begin,
                            **extra)

    begin, seen = time.perf_counter(), 0
    if start_epoch == 0:
        save(last, 0, {})  # a resumable state exists from the start, even if epoch 1 is interrupted
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        losses, by_tissue = [], {}
        for step, (images, masks, tasks) in enumerate(loader):
            task = int(tasks[0])  # the sampler's batches hold one tissue
            x = images.to(device, non_blocking=True).float() / 255.0
            m = masks.to(device, non_blocking=True).float()
            if aug is not None:
                x, m = augment(aug, x, m, config.stain_jitter)
            others = exclusive_tissues(task) if config.exclusion else ()
            with torch.autocast(device.type, enabled=scaler.is_enabled()):
                logits = model.forward_tasks(x, [task, *others])
            loss = dice_bce_loss(logits[:, 0].float(), m, balanced=config.balanced_loss)
            if others:
                loss = loss + config.exclusion * exclusion_loss(logits[:, 1:].float(), m)
            if consistency[task]:
                y, x0, size = context_crop(min(x.shape[-2:]))
                with torch.autocast(device.type, enabled=scaler.is_enabled()):
                    crop = model.forward_tasks(x[..., y:y + size, x0:x0 + size].contiguous(), [task])
                whole = logits[:, 0, :, y:y + size, x0:x0 + size]
                loss = loss + consistency[task] * consistency_loss(crop[:, 0].float(), whole.float())
            if config.context:
                canvas, y, x0 = in_context(x, config.context_margin)
                with torch.autocast(device.type, enabled=scaler.is_enabled()):
                    seen_in = model.forward_tasks(canvas, [task])[:, 0, :, y:y + x.shape[-2], x0:x0 + x.shape[-1]]
                loss = loss + config.context * dice_bce_loss(seen_in.float(), m, balanced=config.balanced_loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            with OtherTissuesKept(optimizer, model, task, TISSUES[task].scale_id, config.keep_other_tissues, others):
                scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(model)
            losses.append(loss.item())
            by_tissue.setdefault(TISSUES[task].abbrev, []).append(losses[-1])
            seen += len(images)
            notify({"event": "step", "epoch": epoch + 1, "epochs": config.epochs, "step": step + 1,
                    "steps": len(sampler), "loss": losses[-1],
                    "patches_per_s": seen / (time.perf_counter() - begin)})
        scheduler.step()
        val = [samples[i] for i in val_idx]
        with averaged():
            metrics = validate(model, val, device) if val else {}
            fit = validate(model, fit_probe, device)
        score = selection_score(metrics, config.select) if metrics else -float(np.mean(losses))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": metrics, "score": score,
                        "train_loss": {k: float(np.mean(v)) for k, v in sorted(by_tissue.items())},
                        "train_dice": fit})
        if average is not None and val:  # what the average buys: the raw weights' validation beside it
            history[-1]["val_dice_raw"] = validate(model, val, device)
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
