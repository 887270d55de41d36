"""A slide's work in progress: one on-disk canvas per scale group and a journal of done bands.

``OUT/<slide>/.work/`` holds ``<group>.u8`` (a memory-mapped uint8 [T, H, W] mask canvas, 0/255,
on disk, not in RAM), ``journal.jsonl`` (one line per finished band, written after the band's
pixels are flushed) and ``key.json`` (what the work was for: slide, engine, settings). A run
killed at any point -- even with SIGKILL -- resumes at the first band not in the journal; work
for another key is thrown away. The folder is removed when the slide's outputs are complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from omniseg_rt.fileutil import atomic_write_text, io_errors

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
        with io_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(key, indent=2, sort_keys=True) + "\n")

    def canvas_bytes_to_allocate(self, group: str, shape: tuple[int, int, int]) -> int:
        """Bytes :meth:`canvas` would add on disk for ``group`` (0 when resuming its canvas)."""
        path = self.folder / f"{group}.u8"
        size = int(np.prod(shape))
        return 0 if path.is_file() and path.stat().st_size == size else size

    def canvas(self, group: str, shape: tuple[int, int, int]) -> np.memmap:
        """The uint8 [T, H, W] canvas of ``group``: zeros when new, the earlier pixels on resume.

        Its blocks are allocated on disk first (``posix_fallocate``), so a full disk fails here
        with an :class:`~omniseg_rt.errors.OutputError` naming the file, not later with SIGBUS
        when a page of the memory map is written.
        """
        path = self.folder / f"{group}.u8"
        size = int(np.prod(shape))
        with io_errors(path):
            if path.exists() and path.stat().st_size != size:
                path.unlink()
            new = not path.exists()
            try:
                with open(path, "ab") as fh:
                    _allocate(fh.fileno(), size)
            except OSError:
                if new:  # give back what was allocated
                    path.unlink(missing_ok=True)
                raise
            return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)

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

    def mark_done(self, group: str, band: int, *canvases: np.memmap) -> None:
        """Record ``band`` as finished, after its pixels (in every one of ``canvases``) reached the files."""
        for canvas in canvases:
            with io_errors(Path(canvas.filename)):
                canvas.flush()
        with io_errors(self.journal), open(self.journal, "a") as fh:
            fh.write(json.dumps({"group": group, "band": band}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _allocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for the file ``fd`` (zeros where new); ENOSPC if they are not there."""
    if size == 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, max(size, os.fstat(fd).st_size))  # no fallocate on this file system: sparse


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


#: outputs beside the masks (overlay, tissue mask, GeoJSON, JSON files): a generous allowance
_OTHER_OUTPUT_BYTES = 16 << 20


def output_bytes_estimate(canvas_shapes) -> int:
    """Disk a slide's outputs may take: its masks compressed (at most an eighth of the canvases,
    0/255 masks deflate far better) plus an allowance for the other files. ``canvas_shapes``:
    the [T, H, W] shapes of its canvases."""
    return sum(int(np.prod(shape)) for shape in canvas_shapes) // 8 + _OTHER_OUTPUT_BYTES


def check_free_space(folder: Path, work_bytes: int, output_bytes: int) -> None:
    """Raise :class:`~omniseg_rt.errors.OutputError` before a slide starts when ``folder``'s disk
    lacks the space for its work files and outputs (estimates, in bytes)."""
    from omniseg_rt.errors import OutputError

    need = work_bytes + output_bytes
    with io_errors(folder, "check the free space of"):
        free = shutil.disk_usage(folder).free
    if free < need:
        error = OutputError(f"{folder}: this slide needs about {_mb(need)} of disk for its work files and outputs "
                            f"({_mb(work_bytes)} + {_mb(output_bytes)}), and only {_mb(free)} are free there; "
                            "free space on that disk (the slide resumes where it stopped) or choose another --out")
        error.errno = errno.ENOSPC
        raise error


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
