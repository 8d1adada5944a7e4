"""`python -m sow`: the same as the `sow` command."""

from sow.cli import main

main()
