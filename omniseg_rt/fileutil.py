"""Small file helpers shared by every stage."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_path(target: str | os.PathLike) -> Path:
    """A hidden temporary name beside ``target``, unique to this call (two processes or threads
    writing the same target never share one): ``.<name>.<pid>-<random>.tmp``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name made by :func:`temp_path` (or an older ``.<name>.tmp``)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp." in name)


@contextmanager
def replacing(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """``with replacing(path) as tmp:`` write ``tmp`` (a :func:`temp_path` beside ``path``, plus
    ``suffix`` for writers that want an extension); when the block succeeds ``tmp`` is renamed
    over ``path``, when it fails ``tmp`` is removed and ``path`` stays as it was."""
    target = Path(target)
    tmp = temp_path(target)
    tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it over ``path``; a
    failure leaves ``path`` as it was and raises :class:`~omniseg_rt.errors.OutputError`
    naming it."""
    with io_errors(path), replacing(path) as tmp:
        tmp.write_text(text)


_FIXES = {
    errno.ENOSPC: "the disk is full: free space there or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space there or write elsewhere",
    errno.EROFS: "that file system is read-only: write elsewhere",
    errno.EACCES: "permission denied: write elsewhere or fix the folder's permissions",
    errno.EPERM: "permission denied: write elsewhere or fix the folder's permissions",
}


def describe_os_error(path: str | os.PathLike, exc: OSError, doing: str = "write") -> str:
    """One line naming ``path`` (or the file the error names), what failed and the fix."""
    where = exc.filename if exc.filename and exc.errno not in (errno.ENOSPC, errno.EDQUOT) else path
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIXES.get(exc.errno)
    return f"{where}: could not {doing} it ({reason}){'; ' + fix if fix else ''}"


@contextmanager
def io_errors(path: str | os.PathLike, doing: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` raised inside (disk full, read-only, ...) into an
    :class:`~omniseg_rt.errors.OutputError` whose message names ``path`` and the fix; errors
    that already are omniseg-rt errors pass through."""
    from omniseg_rt.errors import OmnisegError, OutputError

    try:
        yield
    except OmnisegError:
        raise
    except OSError as exc:
        error = OutputError(describe_os_error(path, exc, doing))
        error.errno = exc.errno
        raise error from exc


def read_format_json(path: Path, expected_format: str, what: str,
                     fix: str | Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """A JSON manifest whose ``format`` must be ``expected_format``; ``what`` names it in errors
    ("engine manifest"), ``fix`` says what to do about an unreadable one or one of another format
    version (a callable gets what could be read -- ``{}`` if nothing -- and is called only then)."""
    from omniseg_rt.errors import InvalidInputError

    def advice(readable: Any) -> str:
        return fix(readable if isinstance(readable, dict) else {}) if callable(fix) else fix

    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: unreadable {what} ({exc}); {advice(None)}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found == expected_format:
        return manifest
    kind, _, version = expected_format.rpartition("/")
    if isinstance(found, str) and found.startswith(kind + "/"):
        theirs = found.rpartition("/")[2]
        age = "a newer" if theirs.isdigit() and version.isdigit() and int(theirs) > int(version) else "an older"
        raise InvalidInputError(f"{path}: {what} of format {found}, written by {age} omniseg-rt; this one reads "
                                f"{expected_format}: {advice(manifest)}")
    raise InvalidInputError(f"{path}: not an omniseg-rt {what} (format {expected_format!r} expected)")


def cache_dir() -> Path:
    """omniseg-rt's cache folder: ``$OMNISEG_RT_CACHE``, else ``$XDG_CACHE_HOME/omniseg-rt``, else
    ``~/.cache/omniseg-rt`` (default engines, TensorRT plans and timing caches)."""
    if os.environ.get("OMNISEG_RT_CACHE"):
        return Path(os.environ["OMNISEG_RT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omniseg-rt"
