"""`python -m sow`: the same as the `sow` command.

``python -m`` puts the working directory first on ``sys.path``; it is taken off before
anything else is imported, so that neither a plugin (a ``*.dist-info`` lying there) nor a
module shadowing a dependency loads from wherever the user happens to stand. (sow itself
is already imported by then.)
"""

import os
import sys


def _without_working_directory(path: list[str]) -> list[str]:
    cwd = os.path.realpath(os.getcwd())
    return [p for p in path if p not in ("", ".") and os.path.realpath(p) != cwd]


sys.path[:] = _without_working_directory(sys.path)

from sow.cli import run  # noqa: E402

run()
