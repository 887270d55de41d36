"""One writer per folder: an exclusive lock that names its holder.

``<folder>/.omniseg-rt.lock`` carries the operating system's lock (``filelock``: ``flock`` on
POSIX, released by the kernel when its process ends, even by ``kill -9``), and
``<folder>/.omniseg-rt.lock.json`` says who holds it (PID, host, start time, command), so that a
second process can say whom it is waiting for. A note left behind by a process that died is
taken over, with a warning naming that process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from omniseg_rt.errors import BusyError
from omniseg_rt.fileutil import atomic_write_text, io_errors

log = logging.getLogger(__name__)
LOCK_NAME = ".omniseg-rt.lock"
HOLDER_NAME = ".omniseg-rt.lock.json"


def describe_holder(holder: dict[str, Any] | None) -> str:
    """"PID 123 on host-a since 2026-11-30 10:00:00 UTC (omniseg-rt segment ...)" or "unknown"."""
    if not holder:
        return "a process that left no note"
    text = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


class FolderLock:
    """``with FolderLock(folder, what="output folder"):`` -- held by this process until the block ends.

    ``wait=False``: raise :class:`BusyError` naming the holder at once if another process holds
    it; ``wait=True``: log whom it waits for, then wait. ``fix`` ends the busy message.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder", wait: bool = False,
                 fix: str = "wait for it to finish or choose another folder") -> None:
        self.folder = Path(folder)
        self.what, self.wait, self.fix = what, wait, fix
        self._lock = None

    @property
    def holder_file(self) -> Path:
        return self.folder / HOLDER_NAME

    def read_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def __enter__(self) -> FolderLock:
        import filelock

        lock = filelock.FileLock(str(self.folder / LOCK_NAME), thread_local=False)
        with io_errors(self.folder / LOCK_NAME, "lock"):
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                holder = describe_holder(self.read_holder())
                if not self.wait:
                    raise BusyError(f"{self.folder}: this {self.what} is in use by another omniseg-rt run "
                                    f"({holder}); {self.fix}") from None
                log.warning("%s: waiting for the other omniseg-rt run using this %s (%s) to finish",
                            self.folder, self.what, holder)
                lock.acquire()
        self._lock = lock
        try:
            previous = self.read_holder()
            if previous is not None and not _is_me(previous):
                log.warning("%s: taking over the lock left by %s, which is no longer running", self.folder,
                            describe_holder(previous))
            atomic_write_text(self.holder_file, json.dumps(_me(), indent=2) + "\n")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is None:
            return
        self.holder_file.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else ""}


def _is_me(holder: dict[str, Any]) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def process_is_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a PID we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
