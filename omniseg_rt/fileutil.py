"""Small file helpers shared by every stage."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()



def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it over ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def read_format_json(path: Path, expected_format: str, what: str, fix: str) -> dict[str, Any]:
    """A JSON manifest whose ``format`` must be ``expected_format``; ``what`` names it in errors
    ("engine manifest"), ``fix`` says what to do about an unreadable one."""
    from omniseg_rt.errors import InvalidInputError

    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: unreadable {what} ({exc}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise InvalidInputError(f"{path}: not an omniseg-rt {what} (format {expected_format!r} expected)")
    return manifest
