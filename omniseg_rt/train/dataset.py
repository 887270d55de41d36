"""Partially labelled patch sets: discovery, validation, loading.

Two ways to describe a set:

- the original Omni-Seg folder layout ``<root>/<task>_<scale>_<name>/<stain>/<image>.png`` with
  the mask beside each image as ``<image>_mask_<suffix>.png`` (folder names and suffixes from
  ``omniseg_rt.tissues``); each image is labelled for its folder's tissue only;
- a CSV file with the columns ``image_path,label_path,task_id,scale_id`` (paths relative to the
  CSV's folder or absolute).

Unknown tissue folders and malformed CSVs are errors. Images without masks, masks without
images, mismatched sizes and unreadable files are skipped, counted and logged (never silently).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.tissues import NUM_SCALES, TISSUES

log = logging.getLogger(__name__)
_FOLDER = re.compile(r"^(\d+)_(\d+)_(.+)$")
_SOURCE = re.compile(r"^(im_\d+)")


@dataclass(frozen=True)
class Sample:
    """One labelled patch: image and mask paths, its tissue, scale, stain and source image."""

    image: Path
    mask: Path
    task_id: int
    scale_id: int
    stain: str
    source: str  # "im_<a>" for "im_<a>_<b>.png": patches of one source stay on one side of a split


@dataclass
class Discovery:
    samples: list[Sample]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file


def _skip(found: Discovery, reason: str, path: Path) -> None:
    found.skipped[reason] += 1
    found.examples.setdefault(reason, str(path))
    log.warning("skipped %s: %s", path, reason)


def _size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError):
        return None


def _source_of(image: Path) -> str:
    match = _SOURCE.match(image.stem)
    return match[1] if match else image.stem


def _add(found: Discovery, image: Path, mask: Path, task: int, scale: int, stain: str) -> None:
    size_image, size_mask = _size(image), _size(mask)
    if size_image is None or size_mask is None:
        _skip(found, "unreadable image or mask", image if size_image is None else mask)
    elif size_image != size_mask:
        _skip(found, "mask size differs from image size", mask)
    elif size_image[0] % 16 or size_image[1] % 16:
        _skip(found, "sides not multiples of 16", image)
    else:
        found.samples.append(Sample(image, mask, task, scale, stain, _source_of(image)))


def _tissue_of_folder(folder: Path) -> tuple[int, int]:
    match = _FOLDER.match(folder.name)
    known = ", ".join(t.folder for t in TISSUES)
    if not match or not 0 <= int(match[1]) < len(TISSUES):
        raise InvalidInputError(f"{folder}: not a tissue folder (<task>_<scale>_<name>); known: {known}")
    task, scale = int(match[1]), int(match[2])
    if scale != TISSUES[task].scale_id:
        raise InvalidInputError(
            f"{folder}: task {task} ({TISSUES[task].abbrev}) belongs to scale {TISSUES[task].scale_id}, "
            f"the folder says {scale}; known: {known}"
        )
    return task, scale


def discover_folders(root: Path) -> Discovery:
    found = Discovery([])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InvalidInputError(f"{root}: no tissue folders (expected e.g. {TISSUES[0].folder}/he/im_1_0.png)")
    for folder in folders:
        task, scale = _tissue_of_folder(folder)
        suffix = TISSUES[task].mask_suffix
        for png in sorted(folder.rglob("*.png")):
            if png.name.startswith("."):
                continue
            stain = png.parent.name if png.parent != folder else ""
            if "_mask_" in png.stem:
                if not png.stem.endswith(suffix):
                    _skip(found, f"mask suffix is not {suffix}", png)
                elif not (png.parent / f"{png.stem[: -len(suffix)]}.png").is_file():
                    _skip(found, "mask without image", png)
                continue
            mask = png.parent / f"{png.stem}{suffix}.png"
            if not mask.is_file():
                _skip(found, "image without mask", png)
                continue
            _add(found, png, mask, task, scale, stain)
    return found


def discover_csv(table: Path) -> Discovery:
    found = Discovery([])
    with open(table, newline="") as fh:
        reader = csv.DictReader(fh)
        wanted = {"image_path", "label_path", "task_id", "scale_id"}
        if not reader.fieldnames or not wanted <= set(reader.fieldnames):
            raise InvalidInputError(f"{table}: needs the columns {sorted(wanted)}, has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                task, scale = int(row["task_id"]), int(row["scale_id"])
            except ValueError:
                raise InvalidInputError(f"{table}:{line}: task_id and scale_id must be integers") from None
            if not 0 <= task < len(TISSUES) or not 0 <= scale < NUM_SCALES:
                raise InvalidInputError(f"{table}:{line}: task_id {task} or scale_id {scale} out of range")
            image, mask = (Path(row[k]) if os.path.isabs(row[k]) else table.parent / row[k]
                           for k in ("image_path", "label_path"))
            if not image.is_file() or not mask.is_file():
                _skip(found, "listed file missing", image if not image.is_file() else mask)
                continue
            _add(found, image, mask, task, scale, image.parent.name)
    return found


def discover(root: str | os.PathLike) -> Discovery:
    """Find every usable sample under ``root`` (a folder in the original layout or a CSV file)."""
    path = Path(root)
    if not path.exists():
        raise MissingFileError(f"{path}: no such data folder or CSV file")
    found = discover_csv(path) if path.is_file() else discover_folders(path)
    if found.skipped:
        log.warning("%s: skipped %s", path, dict(found.skipped))
    if not found.samples:
        raise InvalidInputError(f"{path}: no usable image/mask pairs (skipped: {dict(found.skipped) or 'none'})")
    return found


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [3, H, W] RGB, mask bool [H, W]); alpha dropped, mask = any channel > 127."""
    with Image.open(sample.image) as img:
        rgb = np.asarray(img.convert("RGB"))
    with Image.open(sample.mask) as img:
        mask = np.asarray(img.convert("L")) > 127
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), mask


def split_by_source(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): whole source images go to one side; every tissue keeps a train sample."""
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    by_source: dict[str, list[int]] = {}  # a source shared by tissues or stains is one unit
    for i, s in enumerate(samples):
        by_source.setdefault(s.source, []).append(i)
    order = sorted(by_source)
    np.random.default_rng(seed).shuffle(order)
    target = round(val_fraction * len(samples))
    val: list[int] = []
    train_per_task = Counter(s.task_id for s in samples)
    for source in order:
        if len(val) >= target:
            break
        idx = by_source[source]
        tasks = Counter(samples[i].task_id for i in idx)
        if any(train_per_task[t] - n < 1 for t, n in tasks.items()):
            continue  # would leave a tissue without training data
        val.extend(idx)
        train_per_task.subtract(tasks)
    val_set = set(val)
    return [i for i in range(len(samples)) if i not in val_set], sorted(val)
