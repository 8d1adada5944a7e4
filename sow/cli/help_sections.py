"""Options grouped under headings in ``--help``, by each option's ``rich_help_panel``.

The CLI prints click's plain help (``rich_markup_mode=None``: option names stay whole at any
width), which ignores typer's ``rich_help_panel``. :class:`SectionedCommand` reads the same
attribute and writes one section per panel, in the order the panels first appear; options with
no panel go under "Options". A command opts in with ``@app.command(cls=SectionedCommand)``.
"""

from __future__ import annotations

import click
from typer.core import TyperCommand


class SectionedCommand(TyperCommand):
    """A typer command whose plain ``--help`` lists its options by panel."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments: list[tuple[str, str]] = []
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)
