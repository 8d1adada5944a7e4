"""The command line: a thin Typer app over the Python API.

`commands` holds the Typer app and the `generate` / `plan` / `plugins` commands, `batch` and
`eval` the faces of those library parts, `progress` the progress bar. The CLI imports the
library; nothing in the library imports the CLI.
"""
from sow.cli.commands import app, main, run

__all__ = ["app", "main", "run"]
