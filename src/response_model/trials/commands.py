"""The ``response-model trials`` command group (issue 15): ``subsets``, ``describe``, ``design`` (with
``--report``) and, from :mod:`response_model.trials.discover`, ``discover``. Registered lazily on the main command
(``cli.py``'s ``lazy={...}``); subcommands in other modules are registered lazily here, one line each."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

_CONTEXT = {"help_option_names": ["-h", "--help"]}

#: subcommands kept in their own modules: name -> "module:attribute" (imported when named or listed)
LAZY_COMMANDS: dict[str, str] = {
    "effects": "response_model.trials.estimation_commands:effects",
    "discover": "response_model.trials.estimation_commands:discover_command",
}


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
    return subset_frame(loaded.parsed), loaded


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


def _table(path: Path | None) -> pd.DataFrame | None:
    """A CSV or Parquet table (the effects and balance frames of response_model.trials.effects)."""
    import pandas as pd

    if path is None:
        return None
    return pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)


def _predictor(model_uri: str | None):
    """(predictor, model facts) of ``model_uri``, or (None, None)."""
    if model_uri is None:
        return None, None
    from response_model import tracking
    from response_model.modeling.bundle import SIMULATED_DATA_LABEL
    from response_model.modeling.predict import as_bundle, load_model
    from response_model.modeling.registry import require_model

    tracking.configure_tracking()
    require_model(model_uri)
    bundle = as_bundle(load_model(model_uri))
    meta = bundle.metadata
    simulated = bool(meta.get("trained_on_simulated_data")) or meta.get("label") == SIMULATED_DATA_LABEL
    return bundle.predictor(), {"name": meta.get("model_name"), "version": meta.get("model_version"),
                                "uri": model_uri, "simulated": simulated}


def _monte_carlo(plan, frame, truth, subset, trials: int, seed: int, pool_size: int):
    """The Monte-Carlo table of ``plan``: drawn from the cohort's own truth when given, else from a fresh
    simulated pool of ``pool_size`` patients."""
    from response_model.trials.design import simulate_power
    from response_model.trials.rates import truth_pool

    spec = plan.design.spec
    if trials == 0 or spec.endpoint == "pfs":
        return None
    pool = plan.pool
    if pool is None:
        from response_model.sources.simulator import simulate_cohort
        from response_model.trials.subsets import subset_frame

        sim = simulate_cohort(pool_size, seed)
        pool = truth_pool(subset_frame(sim.cohort), sim.truth, subset, spec.arm, spec.comparator, spec.endpoint)
        true = pool.rates("simulator's truth")
        plan.design.warnings.append(
            f"the Monte-Carlo trials draw from the simulator's truth ({pool_size} simulated patients: in the subset "
            f"{true.p_arm:.1%} vs {true.p_comparator:.1%}), the analytic sizes from the {plan.design.rates.source}'s "
            "rates: a gap between analytic and empirical power is the error of those rates, not of the formula")
    return simulate_power(plan.design, pool, n_trials=trials, seed=seed)


@trials_group.command("design")
@click.option("--source", required=True, help="Source configuration (YAML) of the cohort.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--subset", "subset_name", required=True, help="Subset to design the trial for.")
@click.option("--arm", required=True, help="Experimental regimen (catalogue name, e.g. atezolizumab_bevacizumab).")
@click.option("--comparator", required=True, help="Comparator regimen (catalogue name, e.g. lenvatinib).")
@click.option("--endpoint", type=click.Choice(["objective_response", "primary_resistance", "pfs"]),
              default="objective_response", show_default=True)
@click.option("--truth", "truth_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Arm rates from this simulator truth table (truth.parquet written with the cohort).")
@click.option("--model-uri", default=None, help="Arm rates from this model's counterfactual predictions.")
@click.option("--alpha", type=float, default=None, help="Two-sided α (default configs/trial_design.yaml).")
@click.option("--alpha-split", type=click.Choice(["fixed_sequence", "bonferroni"]), default=None,
              help="How the all-comers design splits α between overall and subset hypotheses.")
@click.option("--primary-alpha-share", type=float, default=None, help="Bonferroni: the overall test's share of α.")
@click.option("--hazard-ratio", type=float, default=None, help="PFS: hazard ratio arm vs comparator in the subset.")
@click.option("--hazard-ratio-outside", type=float, default=None, help="PFS: the hazard ratio outside the subset.")
@click.option("--control-median-months", type=float, default=None,
              help="PFS: the comparator's median PFS; default the cohort's Kaplan–Meier median in the subset.")
@click.option("--accrual-months", type=float, default=None, help="PFS: accrual period.")
@click.option("--follow-up-months", type=float, default=None, help="PFS: follow-up after accrual ends.")
@click.option("--monte-carlo-trials", type=click.IntRange(min=0), default=None,
              help="Simulated trials per design for the empirical power (0 = none; response endpoints).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Monte-Carlo check.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the HTML trial-design report here (and log it to MLflow unless --no-log).")
@click.option("--effects", "effects_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Report: effects table (CSV/Parquet of response_model.trials.effects) for the forest plot.")
@click.option("--balance", "balance_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Report: covariate-balance table (CSV/Parquet) for the balance plot.")
@click.option("--no-log", is_flag=True, help="Do not log the report to MLflow.")
@subsets_option
def design(source: str, path: Path, subset_name: str, truth_path: Path | None, model_uri: str | None,
           monte_carlo_trials: int | None, seed: int, report_path: Path | None, effects_path: Path | None,
           balance_path: Path | None, no_log: bool, subset_files: tuple[Path, ...], **assumptions) -> None:
    """Sample size for an enrichment and an all-comers trial of a subset at 80 % and 90 % power, screening
    burden, and (response endpoints) the empirical power of the designed trials simulated from the simulator."""
    from response_model.trials.design import DesignSpec, design_defaults
    from response_model.trials.planning import plan_text, plan_trial
    from response_model.trials.subsets import get_subset

    subset = get_subset(subset_name, load_named(subset_files))
    spec = DesignSpec.with_defaults(subset.name, assumptions.pop("arm"), assumptions.pop("comparator"), **assumptions)
    frame, _ = _cohort(source, path)
    truth = _table(truth_path)
    predictor, model = _predictor(model_uri)
    plan = plan_trial(frame, subset, spec, truth=truth, predictor=predictor)
    defaults = design_defaults()
    trials = defaults["monte_carlo_trials"] if monte_carlo_trials is None else monte_carlo_trials
    monte_carlo = _monte_carlo(plan, frame, truth, subset, trials, seed, int(defaults["pool_size"]))
    click.echo(plan_text(plan, monte_carlo))
    if report_path is not None:
        _write_report(report_path, plan, subset, monte_carlo, frame, model, truth is not None,
                      _table(effects_path), _table(balance_path), log=not no_log, subset_files=subset_files)


def _write_report(out: Path, plan, subset, monte_carlo, frame, model, simulated_truth: bool, effects, balance,
                  log: bool, subset_files: tuple[Path, ...]) -> None:
    from response_model.trials.describe import prevalence_table
    from response_model.trials.report import ReportInputs, write_trial_report

    simulated = simulated_truth or bool(model and model.get("simulated"))
    inputs = ReportInputs(subset, prevalence_table(frame, list(load_named(subset_files).values())), monte_carlo,
                          effects, balance, model, simulated)
    written, run_id = write_trial_report(out, plan, inputs, frame, log=log)
    click.echo(f"wrote {written}")
    if run_id:
        click.echo(f"logged to run {run_id} (experiment trial-design)")
