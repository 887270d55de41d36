"""The project's exceptions: one root, a few subclasses.

Each subclass also derives from the matching builtin, so callers that already catch
``ValueError`` or ``FileNotFoundError`` keep working. Messages say what was asked, what was
found and how to fix it; the CLI prints them as one line on stderr and exits 1 (2 for a
:class:`UsageError`: an option value that cannot work, found before any work starts).
"""

from __future__ import annotations


class OmnisegError(Exception):
    """Root of every error the library raises on purpose."""


class InvalidInputError(OmnisegError, ValueError):
    """An argument or a file's content is not what the operation needs."""


class UsageError(InvalidInputError):
    """An option's value cannot work (``--batch 0``, ``--out`` naming a file); raised before any work."""


class MissingFileError(OmnisegError, FileNotFoundError):
    """A path the user named does not exist."""


class CheckpointError(InvalidInputError):
    """A checkpoint file cannot be read or does not match an Omni-Seg network."""


class MissingDependencyError(OmnisegError, ImportError):
    """An optional package is needed for this operation but is not installed."""


class ExportError(OmnisegError, RuntimeError):
    """An export produced a graph that fails its checks (rules or numerical parity)."""


class OutputError(OmnisegError, OSError):
    """A file could not be written or read back (disk full, read-only, permissions); the message
    names the file and the fix."""


class BusyError(OmnisegError, RuntimeError):
    """Another process holds the lock of a folder this operation writes into."""
