"""The project's exceptions: one root, a few subclasses.

Each subclass also derives from the matching builtin, so callers that already catch
``ValueError`` or ``FileNotFoundError`` keep working. Messages say what was asked, what was
found and how to fix it; the CLI prints them as one line on stderr and exits 1.
"""

from __future__ import annotations


class OmnisegError(Exception):
    """Root of every error the library raises on purpose."""


class InvalidInputError(OmnisegError, ValueError):
    """An argument or a file's content is not what the operation needs."""


class MissingFileError(OmnisegError, FileNotFoundError):
    """A path the user named does not exist."""


class CheckpointError(InvalidInputError):
    """A checkpoint file cannot be read or does not match an Omni-Seg network."""


class MissingDependencyError(OmnisegError, ImportError):
    """An optional package is needed for this operation but is not installed."""


class ExportError(OmnisegError, RuntimeError):
    """An export produced a graph that fails its checks (rules or numerical parity)."""
