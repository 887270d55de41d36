"""The ``omniseg-rt`` command line: a Typer app, one small module per command.

Each command is a thin shell over one library call; this package renders (rich) and sets exit
codes: 0 ok, 1 domain error (one line on stderr), 2 usage error, 3 some slides failed.
"""

from omniseg_rt.cli.app import app, main

__all__ = ["app", "main"]
