"""The ``response-model trials`` command group (issue 15): ``subsets``, ``describe``, ``design``, ``report``
and, from :mod:`response_model.trials.discover`, ``discover``. Registered lazily on the main command
(``cli.py``'s ``lazy={...}``); subcommands in other modules are registered lazily here, one line each."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

_CONTEXT = {"help_option_names": ["-h", "--help"]}

#: subcommands kept in their own modules: name -> "module:attribute" (imported when named or listed)
LAZY_COMMANDS: dict[str, str] = {}


class _TrialsGroup(click.Group):
    """A group that imports :data:`LAZY_COMMANDS` only when named (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group("trials", cls=_TrialsGroup, context_settings=_CONTEXT)
def trials_group() -> None:
    """Trial design from cohorts: biomarker-defined subsets, their prevalence, sample sizes, the report."""


def subsets_option(func):
    """``--subsets FILE`` (repeatable): subset files read instead of configs/subsets/*.yaml."""
    return click.option("--subsets", "subset_files", multiple=True,
                        type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="Subset file (YAML); repeat for several. Default: every configs/subsets/*.yaml.")(func)


def load_named(subset_files: tuple[Path, ...]):
    """The subsets of ``subset_files`` (default configs/subsets/*.yaml)."""
    from response_model.trials.subsets import load_subsets

    return load_subsets(list(subset_files) or None)


@trials_group.command("subsets")
@subsets_option
def list_subsets(subset_files: tuple[Path, ...]) -> None:
    """List the defined subsets: name, rule, the evidence row it rests on."""
    for subset in load_named(subset_files).values():
        click.echo(f"{subset.name}: {subset.rule}")
        if subset.description:
            click.echo(f"    {subset.description}")
        click.echo(f"    evidence: {subset.citation or '(none cited)'}")
