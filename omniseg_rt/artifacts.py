"""Tell what kind of artefact a path is and describe it (``omniseg-rt inspect``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omniseg_rt._optional import require
from omniseg_rt.errors import InvalidInputError, MissingFileError


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of a checkpoint (more artefact kinds join as stages land).

    Raises:
        MissingFileError: nothing at ``path``.
        InvalidInputError / CheckpointError: not an artefact this version understands.
    """
    target = Path(path)
    if not target.exists():
        raise MissingFileError(f"{target}: no such file or directory")
    if target.is_dir():
        raise InvalidInputError(f"{target}: is a directory; expected a checkpoint file (.pth)")
    require("torch", "read PyTorch checkpoints")
    from omniseg_rt.model.checkpoint import describe_checkpoint

    return describe_checkpoint(target)
