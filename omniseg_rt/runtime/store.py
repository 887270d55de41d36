"""A slide's work in progress: one on-disk canvas per scale group and a journal of done bands.

``OUT/<slide>/.work/`` holds ``<group>.u8`` (a memory-mapped uint8 [T, H, W] mask canvas, 0/255,
on disk, not in RAM), ``journal.jsonl`` (one line per finished band, written after the band's
pixels are flushed) and ``key.json`` (what the work was for: slide, engine, settings). A run
killed at any point -- even with SIGKILL -- resumes at the first band not in the journal; work
for another key is thrown away. The folder is removed when the slide's outputs are complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt.fileutil import atomic_write_text

log = logging.getLogger(__name__)


class WorkStore:
    def __init__(self, slide_dir: Path, key: dict[str, Any], resume: bool = True) -> None:
        self.folder = slide_dir / ".work"
        self.journal = self.folder / "journal.jsonl"
        key_file = self.folder / "key.json"
        key = json.loads(json.dumps(key, sort_keys=True))  # as it reads back (tuples become lists)
        old = _read_json(key_file)
        if self.folder.exists() and (not resume or old != key):
            log.info("%s: discarding earlier work (%s)", self.folder,
                     "--no-resume" if not resume else "made with other settings, engine or slide")
            shutil.rmtree(self.folder)
        self.resumed = self.folder.exists() and self.journal.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(key, indent=2, sort_keys=True) + "\n")

    def canvas(self, group: str, shape: tuple[int, int, int]) -> np.memmap:
        """The uint8 [T, H, W] canvas of ``group``: zeros when new, the earlier pixels on resume."""
        path = self.folder / f"{group}.u8"
        size = int(np.prod(shape))
        mode = "r+" if path.exists() and path.stat().st_size == size else "w+"
        return np.memmap(path, dtype=np.uint8, mode=mode, shape=shape)

    def done_bands(self, group: str) -> set[int]:
        if not self.journal.exists():
            return set()
        done = set()
        for line in self.journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a kill: its band is simply redone
                continue
            if entry.get("group") == group:
                done.add(int(entry["band"]))
        return done

    def mark_done(self, group: str, band: int, canvas: np.memmap) -> None:
        """Record ``band`` as finished, after its pixels reached the file."""
        canvas.flush()
        with open(self.journal, "a") as fh:
            fh.write(json.dumps({"group": group, "band": band}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
