"""Training checkpoints: the original state_dict layout under ``model`` plus our state beside it.

``{"model": <original layout, unused modules included>, "omniseg_rt": <metadata>, "optimizer":
..., "scheduler": ..., "epoch": <completed epochs>, "rng_torch": ..., "history": [...]}``: the
original code loads ``model``; ``load_checkpoint`` reads it with ``weights_only=True``. Each file
is written to a temporary name and renamed, with a JSON sidecar of the metadata beside it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from omniseg_rt import __version__
from omniseg_rt.fileutil import atomic_write_text, replacing
from omniseg_rt.model import OmniSeg, upstream_state_dict
from omniseg_rt.train.dataset import Sample


def data_hash(samples: list[Sample]) -> str:
    """sha256 over every sample's task, scale and the bytes of its image and mask."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (str(s.image), str(s.mask))):
        digest.update(f"{s.task_id},{s.scale_id},{s.image.name},{s.mask.name}\n".encode())
        for path in (s.image, s.mask):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    return {"omniseg_rt": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(path: Path, model: OmniSeg, metadata: dict[str, Any], **state: Any) -> None:
    """Write ``path`` (+ ``path.json``) atomically: model in the original layout, metadata, state."""
    payload = {"model": upstream_state_dict(model), "omniseg_rt": metadata, **state}
    with replacing(path) as tmp:
        torch.save(payload, tmp)
    atomic_write_text(path.with_suffix(".json"), json.dumps(metadata, indent=2, default=str) + "\n")


def load_training_state(path: Path) -> dict[str, Any]:
    """Everything a ``--resume`` needs, read with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_for_release(source: Path, dest: Path) -> dict[str, Any]:
    """Copy a training checkpoint's weights (original layout) and metadata, weights as float16.

    Optimizer, scheduler and RNG state are dropped: the result is for inference and is about a
    quarter of a ``last.pth``. ``load_checkpoint`` turns the weights back into float32.
    """
    state = load_training_state(source)
    payload = {"model": {k: v.half() for k, v in state["model"].items()}, "omniseg_rt": state["omniseg_rt"]}
    with replacing(dest) as tmp:
        torch.save(payload, tmp)
    return state["omniseg_rt"]
