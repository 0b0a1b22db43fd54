"""The default command: `upscale photo.png` means `upscale run photo.png`.

click-default-group would be the maintained way, but it subclasses click's own Group, and typer (0.29)
runs on a vendored copy of click whose TyperGroup is not a click.Group, so the two do not combine.
This small group is the seam to replace once typer offers a default command itself: it only rewrites
the arguments and adds the default command's options to `upscale --help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typer.core import TyperGroup

if TYPE_CHECKING:
    import click

DEFAULT = "run"
_GROUP_FLAGS = {"--help", "-h", "--version", "--install-completion", "--show-completion"}


class DefaultCommandGroup(TyperGroup):
    """Routes `upscale ARGS…` to the `run` command unless ARGS start with a subcommand's name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in _GROUP_FLAGS:
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] INPUTS...  |  COMMAND [ARGS]...")

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """`upscale --help` also lists the options of the default command: that is what users look for."""
        super().format_help(ctx, formatter)
        command = self.commands.get(DEFAULT)
        if command is not None:
            sub = type(ctx)(command, info_name=DEFAULT, parent=ctx)
            with formatter.section(f"Options of `upscale [{DEFAULT}] INPUTS...`"):
                params = [p for p in command.get_params(sub) if p.param_type_name == "option"]
                formatter.write_dl([r for p in params if (r := p.get_help_record(sub))])
