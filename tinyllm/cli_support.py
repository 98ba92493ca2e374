"""Click plumbing shared by every tinyllm command: user errors become one line and exit 1."""

from __future__ import annotations

import click

from tinyllm.errors import TinyLLMError


class Command(click.Command):
    """A click command that prints a TinyLLMError as `Error: <message>` without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TinyLLMError as e:
            raise click.ClickException(str(e)) from None


class Group(click.Group):
    """A click group whose subcommands (and subgroups) are of the kinds above."""

    command_class = Command
    group_class = type  # subgroups are Groups too
