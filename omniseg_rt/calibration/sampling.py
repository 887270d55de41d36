"""Calibration sets: real tissue windows per scale group, from slides and/or patch folders.

``calibration/NAME/`` gets, per scale group, ``<group>.npz`` (calibration part) and
``<group>.holdout.npz`` (a disjoint part kept for the accuracy gate), each an array keyed by the
graph's input name (``image``: uint8 [N, 3, W, W] RGB, the convention of NVIDIA's tools), and
``manifest.json`` (sources with sha256, every window's origin, the arrays' sha256, the seed).

From slides: windows of each group's own pixel size over detected tissue, drawn in turn from each
slide and at random positions. From patch folders (the Omni-Seg layout, ``<task>_<scale>_<name>``
folders): patches of the group's scale, tiled 2 x 2 (for 512 windows of 256 patches). The same
sources and seed give the same set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt import __version__
from omniseg_rt.errors import InvalidInputError, MissingFileError
from omniseg_rt.fileutil import atomic_write_text, read_format_json, replacing, sha256_file
from omniseg_rt.graph_manifest import INPUT_NAME
from omniseg_rt.tissues import SCALE_GROUPS, ScaleGroup

log = logging.getLogger(__name__)
FORMAT = "omniseg-rt.calibration/1"
HOLDOUT_FRACTION = 0.25
_FOLDER = re.compile(r"^(\d)_(\d)_")


def calibrate(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    tiles_per_group: int = 256,
    window: int = 512,
    seed: int = 0,
    mpp: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Sample ``tiles_per_group`` windows per scale group from ``sources`` (slides, slide
    folders, patch folders) into ``out``; a quarter of them (at least 1) is held out. ``mpp`` is
    the pixel size of slides that state none (a slide without one, and no ``mpp``, is an error)."""
    from omniseg_rt.slide import find_slides

    notify = on_progress or (lambda message: None)
    if tiles_per_group < 2:
        raise InvalidInputError(f"--tiles-per-group {tiles_per_group}: needs at least 2 (one is held out)")
    if window % 16:
        raise InvalidInputError(f"--window {window}: must be a multiple of 16")
    slides, patch_dirs = [], []
    for raw in sources:
        path = Path(raw)
        if not path.exists():
            raise MissingFileError(f"{path}: no such slide or patch folder")
        (patch_dirs if path.is_dir() and _patch_folder(path) else slides).append(path)
    slides = find_slides(slides) if slides else []
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT, "seed": seed, "window": window, "input": INPUT_NAME,
                                "tiles_per_group": tiles_per_group, "holdout_fraction": HOLDOUT_FRACTION,
                                "sources": [_describe(p) for p in [*slides, *patch_dirs]], "groups": {},
                                "versions": {"omniseg_rt": __version__}}
    opened = _open_slides(slides, mpp)
    try:
        for group in SCALE_GROUPS:
            notify(f"sampling {tiles_per_group} windows for the {group.name} group")
            candidates = [*_slide_candidates(opened, group, window), *_patch_candidates(patch_dirs, group, window)]
            if not candidates:
                log.warning("no calibration windows for the %s group", group.name)
                continue
            picks = _spread(candidates, tiles_per_group, rng)
            images = np.stack([read() for _, read in picks])
            origins = [origin for origin, _ in picks]
            held = max(1, round(len(picks) * HOLDOUT_FRACTION))
            order = rng.permutation(len(picks))
            parts = {"calibration": np.sort(order[held:]), "holdout": np.sort(order[:held])}
            entry = {"windows": len(picks)}
            for part, index in parts.items():
                name = f"{group.name}.npz" if part == "calibration" else f"{group.name}.holdout.npz"
                with replacing(out / name, suffix=".npz") as tmp:  # savez adds .npz to other names
                    np.savez_compressed(tmp, **{INPUT_NAME: images[index]})
                entry[part] = {"file": name, "count": int(len(index)), "sha256": sha256_file(out / name),
                               "origins": [origins[i] for i in index]}
            manifest["groups"][group.name] = entry
    finally:
        for _, reader, _, _ in opened:
            reader.close()
    if not manifest["groups"]:
        raise InvalidInputError("no calibration windows found: give slides with tissue or Omni-Seg patch folders")
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out, manifest


def load_windows(folder: str | os.PathLike, group: str, part: str = "calibration") -> np.ndarray:
    """uint8 [N, 3, W, W] of ``group``'s calibration or holdout part, checked against the manifest."""
    folder = Path(folder)
    manifest = read_format_json(folder / "manifest.json", FORMAT, "calibration set",
                                "make it again with omniseg-rt calibrate")
    entry = manifest["groups"].get(group)
    if entry is None:
        raise InvalidInputError(f"{folder}: the calibration set has no windows for the {group} group "
                                f"(it has {sorted(manifest['groups'])}); calibrate with sources for that group")
    info = entry[part]
    path = folder / info["file"]
    if sha256_file(path) != info["sha256"]:
        raise InvalidInputError(f"{path}: changed since calibration (sha256 differs); run omniseg-rt calibrate again")
    with np.load(path) as data:
        return data[manifest["input"]]


def _patch_folder(path: Path) -> bool:
    return any(_FOLDER.match(p.name) for p in [path, *path.iterdir()] if p.is_dir())


def _describe(path: Path) -> dict:
    return {"path": str(path), "kind": "patches" if path.is_dir() and _patch_folder(path) else "slide",
            "sha256": sha256_file(path) if path.is_file() else None}


def _open_slides(slides: list[Path], mpp: float | None) -> list[tuple]:
    """(path, reader, tissue mask, its um/px) per slide: each opened and its tissue found once."""
    from omniseg_rt.slide import MissingPixelSizeError, detect_tissue, open_slide
    from omniseg_rt.slide.tissue import TISSUE_MPP

    opened = []
    try:
        for path in slides:
            try:
                reader = open_slide(path)
            except MissingPixelSizeError:
                if mpp is None:
                    raise
                reader = open_slide(path, mpp)  # --mpp: for the slides that state no pixel size
            try:
                tissue_mpp = max(TISSUE_MPP, reader.geometry.mpp)
                opened.append((path, reader, detect_tissue(reader.thumbnail(tissue_mpp), tissue_mpp), tissue_mpp))
            except BaseException:
                reader.close()
                raise
    except BaseException:  # a slide that fails to open or read: close the ones already open
        for _, reader, _, _ in opened:
            reader.close()
        raise
    return opened


def _slide_candidates(opened: list[tuple], group: ScaleGroup, window: int):
    """Per slide: (origin description, reader of that window) for every tissue window."""
    from omniseg_rt.slide.plan import plan_group, read_window, too_coarse

    for path, reader, tissue, tissue_mpp in opened:
        g = reader.geometry
        if too_coarse(group.nominal_mpp, g.mpp):
            continue
        plan = plan_group(group, group.nominal_mpp, g.mpp, g.l0_size, g.level_downsamples, g.level_for, window, 0,
                          tissue, tissue_mpp)
        yield [({"source": str(path), "l0_xy": list(s.l0_xy), "level": s.level, "mpp": group.nominal_mpp},
                (lambda s=s, r=reader: read_window(r, s))) for band in plan.bands for s in band]


def _patch_candidates(folders: list[Path], group: ScaleGroup, window: int):
    """Per patch folder: mosaics of this group's patches as windows."""
    from PIL import Image

    for root in folders:
        images = sorted(p for p in root.rglob("*.png") if "_mask_" not in p.name
                        and any(_FOLDER.match(part) and int(_FOLDER.match(part).group(2)) == group.scale_id
                                for part in p.relative_to(root).parts[:-1] + (root.name,)))
        if not images:
            continue

        def mosaic(paths: list[Path]) -> np.ndarray:
            tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
            side = tiles[0].shape[0]
            per = math.ceil(window / side)
            rows = [np.concatenate([tiles[(r * per + c) % len(tiles)] for c in range(per)], axis=1) for r in range(per)]
            return np.ascontiguousarray(np.concatenate(rows, axis=0)[:window, :window].transpose(2, 0, 1))

        per_window = math.ceil(window / 256) ** 2
        groups = [images[i:i + per_window] for i in range(0, len(images), per_window)]
        yield [({"source": str(root), "patches": [str(p.relative_to(root)) for p in paths]},
                (lambda paths=paths: mosaic(paths))) for paths in groups]


def _spread(candidates: list[list], count: int, rng: np.random.Generator) -> list:
    """``count`` picks spread over the sources: each source shuffled, then taken in turn."""
    pools = [[c[i] for i in rng.permutation(len(c))] for c in candidates if c]
    picks = []
    while len(picks) < count and any(pools):
        for pool in pools:
            if pool and len(picks) < count:
                picks.append(pool.pop(0))
    return picks


def calibration_windows(calibration, tissues, part: str) -> np.ndarray:
    """The calibration set's ``part`` windows of every scale group holding one of ``tissues``."""
    groups = [g.name for g in SCALE_GROUPS if any(t in g.task_ids for t in tissues)]
    return np.concatenate([load_windows(calibration, g, part) for g in groups])
