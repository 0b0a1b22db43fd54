"""The default command: `upscale photo.png` means `upscale run photo.png`; and how commands show.

click-default-group would be the maintained way, but it subclasses click's own Group, and typer (0.29)
runs on a vendored copy of click whose TyperGroup is not a click.Group, so the two do not combine.
This small group is the seam to replace once typer offers a default command itself: it rewrites the
arguments, adds the default command's options to `upscale --help` and to shell completion
(`upscale --ti<TAB>`), and names the command as the user typed it (`upscale`, not `upscale run`).
"""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING

from typer.core import TyperArgument, TyperCommand, TyperGroup

from upscale.errors import UsageError

if TYPE_CHECKING:
    import click

DEFAULT = "run"
_GROUP_FLAGS = {"--help", "-h", "--version", "-V", "--install-completion", "--show-completion"}
_IMPLICIT = "upscale.implicit_default"  # ctx.meta key: the user did not type `run`


class DefaultCommandGroup(TyperGroup):
    """Routes `upscale ARGS…` to the `run` command unless ARGS start with a subcommand's name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in _GROUP_FLAGS:
            if not ctx.resilient_parsing:  # never while completing
                self._check_typo(args[0])
            args = [DEFAULT, *args]
            ctx.meta[_IMPLICIT] = True
        return super().parse_args(ctx, args)

    def _check_typo(self, word: str) -> None:
        """`upscale modles`: not a file, and close to a command's name, it was meant as the command."""
        if word.startswith("-") or os.path.exists(word) or os.path.splitext(word)[1] or set("*?[") & set(word):
            return
        close = difflib.get_close_matches(word, [c for c in self.commands if c != DEFAULT], n=1, cutoff=0.7)
        if close:
            raise UsageError(f"no command or input {word!r}: did you mean `upscale {close[0]}`?")

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

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        """Before any command name: the subcommands, and the default command's options."""
        results = super().shell_complete(ctx, incomplete)
        command = self.commands.get(DEFAULT)
        if command is not None and incomplete.startswith("-"):
            sub = command.make_context(DEFAULT, [], parent=ctx, resilient_parsing=True)
            known = {item.value for item in results}
            results += [item for item in command.shell_complete(sub, incomplete) if item.value not in known]
        return results


class _Context(TyperCommand.context_class):  # type: ignore[name-defined,misc]
    @property
    def command_path(self) -> str:
        if self.parent is not None and self.info_name == DEFAULT and self.meta.get(_IMPLICIT):
            return self.parent.command_path  # errors and usage say `upscale`, as typed
        return super().command_path


class PlainArgument(TyperArgument):
    """An argument shown by its metavar alone: no Python type (`<list[str]>`), no braces (`{name}`)."""

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required or name.endswith("...") else f"[{name}]"


class Command(TyperCommand):
    """A subcommand with plain arguments, named as typed (see _Context)."""

    context_class = _Context

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = PlainArgument
