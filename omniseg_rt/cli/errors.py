"""How commands report errors: one line on stderr; exit code 2 for usage errors (an option value
that cannot work), 1 for the others."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from omniseg_rt.errors import OmnisegError, UsageError

EXIT_ERROR = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable)


def domain_errors(func: F) -> F:
    """Turn an :class:`OmnisegError` raised by a command into one stderr line and exit code 1
    (2 for a :class:`UsageError`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmnisegError as exc:
            message = " ".join(str(exc).split())
            sys.stderr.write(f"omniseg-rt: error: {message}\n")
            raise typer.Exit(EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]
