"""``response-model trials effects`` and ``response-model trials discover`` (registered lazily in
:mod:`response_model.trials.commands`)."""

from __future__ import annotations

from pathlib import Path

import click

from response_model.trials.commands import _chosen, _cohort, _predictor, subsets_option
from response_model.trials.estimation import ENDPOINTS

_CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command("effects", context_settings=_CONTEXT)
@click.option("--source", required=True, help="Source configuration (YAML), e.g. configs/sources/canonical.yaml.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--subset", "names", multiple=True, help="Subset name; repeat for several. Default: every one.")
@click.option("--arm", required=True, help="Regimen of the experimental arm (catalogue name).")
@click.option("--comparator", required=True, help="Regimen of the comparator arm (catalogue name).")
@click.option("--endpoint", "endpoints", multiple=True, type=click.Choice(ENDPOINTS),
              help="Endpoint; repeat for both. Default: both.")
@click.option("--model-uri", default=None, help="Add the model's counterfactual estimate (models:/NAME/V or a folder).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write effects.csv, balance.csv and verdicts.csv here "
                   "(for `trials design --effects/--balance`).")
@subsets_option
def effects(source: str, path: Path, names: tuple[str, ...], arm: str, comparator: str, endpoints: tuple[str, ...],
            model_uri: str | None, out_dir: Path | None, subset_files: tuple[Path, ...]) -> None:
    """Effect of ARM vs COMPARATOR in every patient ("all") and in each subset: each arm's response and
    primary-resistance rate and their difference with 95 % intervals — naive (observed), model
    (counterfactual predictions) and adjusted (cross-fitted AIPW) — the covariate balance after weighting,
    and which estimate is trusted, and why."""
    from response_model.trials.effects import estimate_effects, format_effects

    subsets = _chosen(subset_files, names)
    frame, loaded = _cohort(source, path)
    predictor, _ = _predictor(model_uri)
    memberships = {"all": [True] * len(frame), **{s.name: s.membership(frame) for s in subsets}}
    estimates = estimate_effects(loaded, memberships, [(arm, comparator)], endpoints=endpoints or ENDPOINTS,
                                 predictor=predictor)
    click.echo(f"cohort: {path} ({len(frame)} patients); population: patients given {arm} or {comparator}")
    click.echo(format_effects(estimates))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("effects", "balance", "verdicts"):
            getattr(estimates, name).to_csv(out_dir / f"{name}.csv", index=False)
        click.echo(f"wrote {out_dir}/effects.csv, balance.csv, verdicts.csv")


@click.command("discover", context_settings=_CONTEXT)
@click.option("--source", required=True, help="Source configuration (YAML), e.g. configs/sources/canonical.yaml.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--arm", required=True, help="Regimen of the experimental arm (catalogue name).")
@click.option("--comparator", required=True, help="Regimen of the comparator arm (catalogue name).")
@click.option("--endpoint", type=click.Choice(ENDPOINTS), default="objective_response", show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of the split into halves "
              "(default: configs/trial_effects.yaml).")
@click.option("--save", "save_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the surviving rules as a subset file (YAML, configs/subsets format) here.")
def discover_command(source: str, path: Path, arm: str, comparator: str, endpoint: str, seed: int | None,
                     save_path: Path | None) -> None:
    """EXPLORATORY: search single- and two-marker rules for heterogeneity of the ARM-vs-COMPARATOR effect;
    rules found on one half of the cohort, re-estimated on the other, ranked with Holm / BH adjustment."""
    from response_model.trials.discover import discover, save_rules

    _, loaded = _cohort(source, path)
    found = discover(loaded, arm, comparator, endpoint, seed=seed)
    for line in found.lines():
        click.echo(line)
    if save_path is not None:
        click.echo(f"exploratory: wrote {save_rules(found, save_path)} surviving rule(s) to {save_path}")
