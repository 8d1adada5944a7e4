"""The command line: a thin Typer app over the Python API.

`commands` holds the Typer app and the `generate` / `plan` / `plugins` commands; `batch`,
`eval` and `bench` are the faces of those library parts, `choices` the options' fixed choices
(enums), `progress` the one progress bar. The CLI imports the
library; nothing in the library imports the CLI.
"""
from sow.cli.commands import app, main, run

__all__ = ["app", "main", "run"]
