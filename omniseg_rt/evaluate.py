"""``evaluate``: per-tissue foreground Dice and IoU on a labelled patch set, by stain.

Each patch is scored only for its own tissue (the sets are partially labelled). The model is a
checkpoint (PyTorch), an exported graph (ONNX Runtime) or an engine directory (its backend): all
reduce to "uint8 patches + task id -> foreground margins".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.metrics import dice_iou
from omniseg_rt.tissues import TISSUES
from omniseg_rt.train.dataset import discover, load_sample, split_by_source

Predict = Callable[[np.ndarray, int], np.ndarray]  # uint8 [B, 3, H, W], task -> margins [B, H, W]


def predictor(model: str | os.PathLike) -> tuple[Predict, str]:
    """A predict function and a description for a checkpoint, an ONNX graph or an engine directory."""
    path = Path(model)
    if not path.exists():
        raise MissingFileError(f"{path}: no such model (checkpoint, .onnx graph or engine directory)")
    if path.is_dir():
        from omniseg_rt.engines import open_engine

        engine = open_engine(path)

        def run_engine(images: np.ndarray, task: int) -> np.ndarray:
            for runner in engine.runners:
                if task in runner.spec.tissues:
                    return runner.infer(images)[:, runner.spec.tissues.index(task)]
            raise InvalidInputError(f"{path}: the engine has no graph for {TISSUES[task].abbrev}")

        return run_engine, f"engine {path} ({engine.backend} {engine.precision})"
    if path.suffix.lower() == ".onnx":
        from omniseg_rt.engines.base import GraphSpec
        from omniseg_rt.engines.onnxruntime_backend import OnnxRuntimeRunner
        from omniseg_rt.graph_manifest import read_manifest

        meta = read_manifest(path)
        tissues = tuple(meta.task_ids)
        runner = OnnxRuntimeRunner(GraphSpec(meta.name, tissues, meta.scale_group, meta.nominal_mpp, path.name),
                                   path, 0, cache_dir=None)

        def run_graph(images: np.ndarray, task: int) -> np.ndarray:
            if task not in tissues:
                raise InvalidInputError(f"{path}: the graph has no head for {TISSUES[task].abbrev}")
            return runner.infer(images)[:, tissues.index(task)]

        return run_graph, f"graph {path} (onnxruntime)"
    from omniseg_rt._optional import require

    torch = require("torch", "evaluate a checkpoint")
    from omniseg_rt.model import load_checkpoint, margins

    net = load_checkpoint(path)

    def run_checkpoint(images: np.ndarray, task: int) -> np.ndarray:
        with torch.inference_mode():
            logits = net.forward_tasks(torch.from_numpy(images).float() / 255.0, [task])[:, 0]
        return margins(logits).numpy()

    return run_checkpoint, f"checkpoint {path} ({net.family})"


#: which patches of a set: all, or the training or held-out side of the trainer's split
SPLITS = ("all", "train", "val")


def evaluate(data: str | os.PathLike, predict: Predict, stains: list[str] | None = None, split: str = "all",
             val_fraction: float = 0.2, seed: int = 0, sheet: str | os.PathLike | None = None,
             sheet_patches: int = 4) -> dict:
    """Mean per-patch Dice and IoU per tissue (and per tissue and stain) on ``data``.

    ``split``: ``all`` patches, or the ``train`` / ``val`` side of the split ``omniseg-rt train``
    makes with the same ``val_fraction`` and ``seed`` (by source image). ``sheet``: also draw the
    first ``sheet_patches`` patches of each tissue with their reference and predicted outlines
    (:func:`omniseg_rt.outputs.sheet.render_sheet`).
    """
    samples = discover(data).samples
    if split not in SPLITS:
        raise InvalidInputError(f"split {split!r}: choose {', '.join(SPLITS)}")
    if split != "all":
        train_idx, val_idx = split_by_source(samples, val_fraction, seed)
        samples = [samples[i] for i in (train_idx if split == "train" else val_idx)]
    if stains:
        wanted = {s.lower() for s in stains}
        samples = [s for s in samples if s.stain.lower() in wanted]
        if not samples:
            raise InvalidInputError(f"{data}: no patches with stain {sorted(wanted)}")
    per: dict[int, dict[str, list[tuple[float, float]]]] = {}
    examples: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]] = []
    for s in samples:
        image, mask = load_sample(s)
        pred = predict(image[None], s.task_id)[0] > 0
        scores = dice_iou(pred, mask)
        per.setdefault(s.task_id, {}).setdefault(s.stain, []).append(scores)
        if sheet is not None and sum(e[0] == s.task_id for e in examples) < sheet_patches:
            examples.append((s.task_id, image, mask, pred, scores[0]))
    rows = []
    for task in sorted(per):
        every = [v for values in per[task].values() for v in values]
        rows.append({
            "task_id": task, "abbrev": TISSUES[task].abbrev, "name": TISSUES[task].name, "patches": len(every),
            "dice": float(np.mean([d for d, _ in every])), "iou": float(np.mean([i for _, i in every])),
            "by_stain": {stain: {"patches": len(v), "dice": float(np.mean([d for d, _ in v])),
                                 "iou": float(np.mean([i for _, i in v]))} for stain, v in sorted(per[task].items())},
        })
    if sheet is not None:
        from omniseg_rt.outputs.sheet import render_sheet

        render_sheet(sheet, sorted(examples, key=lambda e: e[0]))
    return {"data": str(data), "split": split if split == "all" else f"{split} (val_fraction {val_fraction}, seed {seed})",
            "patches": len(samples), "tissues": rows, **({"sheet": str(sheet)} if sheet is not None else {}),
            "mean_dice": float(np.mean([r["dice"] for r in rows]))}
