"""How commands report domain errors: one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from omniseg_rt.errors import OmnisegError

F = TypeVar("F", bound=Callable)


def domain_errors(func: F) -> F:
    """Turn an :class:`OmnisegError` raised by a command into one stderr line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmnisegError as exc:
            message = " ".join(str(exc).split())
            sys.stderr.write(f"omniseg-rt: error: {message}\n")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
