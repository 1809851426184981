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


def _cohort(source: str, path: Path):
    """(the cohort's subset frame, the loaded cohort) read through ``source`` as validate and train read it;
    rejected rows are left out, and said so on stderr."""
    from response_model.sources import load_source
    from response_model.trials.subsets import subset_frame

    loaded = load_source(source, path)
    for notice in loaded.parsed.notices:
        click.echo(f"notice: {notice}", err=True)
    if not loaded.parsed.ok:
        click.echo(f"warning: {len(loaded.parsed.rejected)} invalid row(s) left out; see `response-model "
                   f"validate --source {source} {path}`", err=True)
    return subset_frame(loaded.parsed.frame()), loaded


def _chosen(subset_files: tuple[Path, ...], names: tuple[str, ...]):
    """The subsets named (every defined one when none is)."""
    from response_model.trials.subsets import get_subset

    defined = load_named(subset_files)
    return [get_subset(name, defined) for name in names] if names else list(defined.values())


@trials_group.command("describe")
@click.option("--source", required=True, help="Source configuration (YAML), e.g. configs/sources/canonical.yaml.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--subset", "names", multiple=True, help="Subset name; repeat for several. Default: every one.")
@subsets_option
def describe(source: str, path: Path, names: tuple[str, ...], subset_files: tuple[Path, ...]) -> None:
    """Describe subsets in a cohort: prevalence (95 % CI) among all and among tested patients, the share
    whose status is unknown, per sequencing panel or site, patients to screen per enrolled, Table 1."""
    from response_model.trials.describe import describe_subset, description_text

    subsets = _chosen(subset_files, names)
    frame, _ = _cohort(source, path)
    click.echo(f"cohort: {path} ({len(frame)} patients)")
    for subset in subsets:
        described = describe_subset(frame, subset)
        click.echo("\n" + description_text(described))
