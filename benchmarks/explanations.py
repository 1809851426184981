"""Benchmark: can the explanations be trusted? Additivity, faithfulness to the simulator, seed stability.

Run by hand from the repository root::

    python benchmarks/explanations.py [--n 5000] [--seed 2026] [--config configs/train/default.yaml]

Simulates a cohort (default: the one configs/train/default.yaml trains on), fits the project's
ResponseClassifier per regimen class × outcome with that config's parameters (no search), explains
every training patient and prints one row per model:

* additivity — max |base + Σ contributions − decision_function| (log-odds before calibration,
  whole model), and for comparison shap's TreeExplainer on the LightGBM part alone against its raw
  score (shap issues 1071 / 1863 report failures there; LightGBM's ``pred_contrib`` is used instead);
* faithfulness — rank of the expected strong feature (configs/explanations.yaml), the top three,
  and the ranks of the simulator's no-effect features (median, and how many in the bottom half);
* stability — mean overlap of each patient's top five between models refitted with seeds 0 and 1.
The same checks on the terms a clinician reads (response_model.modeling.explanation_groups:
per-feature values summed into terms, missing inputs in one "not recorded" term): additivity of
base + Σ terms, the rank of the expected feature's term among the terms (with "not recorded" as a
term, and with every feature in its own term), the no-effect terms' median rank, top-five overlap.
Targets: additivity ≤ 1e-6; expected feature in the top three; no-effect median rank in the
bottom half; overlap ≥ 4 of 5 — for features and for terms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    parser.add_argument("--stability-rows", type=int, default=1000, help="patients explained by both refits")
    args = parser.parse_args(argv)

    import shap

    from response_model.config import load_yaml
    from response_model.dataset import parse_cohort
    from response_model.features import build_feature_matrix
    from response_model.modeling import explain as ex
    from response_model.modeling import explanation_groups as eg
    from response_model.modeling.estimators import ResponseClassifier
    from response_model.modeling.train import _model_params
    from response_model.regimens import load_catalogue
    from response_model.sources.simulator import simulate_cohort

    started = time.perf_counter()
    config = load_yaml(args.config)
    settings = ex.explanation_config()
    expected = {(e["regimen_class"], e["outcome"]): e["feature"] for e in settings["faithfulness"]["expected_top"]}
    k, seeds = int(settings["stability"]["top_k"]), settings["stability"]["seeds"]
    print(f"simulating {args.n} patients (seed {args.seed}) …", file=sys.stderr)
    sim = simulate_cohort(args.n, args.seed)
    parsed = parse_cohort(sim.cohort)
    frame = parsed.frame()
    X_all = build_feature_matrix(parsed.records, [o.regimen for o in parsed.outcomes])
    catalogue = load_catalogue()
    classes = frame["regimen"].map(lambda r: catalogue[r].regimen_class)
    rows = []
    for regimen_class in config["regimen_classes"]:
        for outcome in ("objective_response", "primary_resistance"):
            print(f"{regimen_class} / {outcome} …", file=sys.stderr)
            index = classes.index[classes == regimen_class]
            y = frame.loc[index, outcome].astype(float)
            X, y = X_all.loc[index][y.notna()], y[y.notna()].astype(int)
            model = ResponseClassifier(**{**_model_params(config, regimen_class, outcome), "calibrate": False})
            model.fit(X, y)
            contributions, _ = model.explain(X)
            additive = ex.additivity_error(model, X)
            tree = shap.TreeExplainer(model.gbm_).shap_values(X[model.gbm_features_])
            tree = tree[1] if isinstance(tree, list) else tree
            base = shap.TreeExplainer(model.gbm_).expected_value
            base = float(np.ravel(base)[-1])
            shap_error = float(np.max(np.abs(base + tree.sum(axis=1) - model.gbm_log_odds(X))))
            table = ex.faithfulness_table(contributions, X, regimen_class, outcome)
            none = table[table["truth"] == "no effect"]
            want = expected.get((regimen_class, outcome))
            sample = X.sample(n=min(len(X), args.stability_rows), random_state=0)
            first = ex.refit_with_seed(model, X, y, seeds[0]).explain(sample)[0]
            second = ex.refit_with_seed(model, X, y, seeds[1]).explain(sample)[0]
            overlap = ex.stability_overlap(first, second, k)
            records = [parsed.records[i] for i in X.index]
            sample_records = [parsed.records[i] for i in sample.index]
            grouped = _grouped_checks(ex, eg, model, X, contributions, records, want)
            grouped[f"terms: top-{k} overlap"] = f"{ex.stability_overlap(eg.grouped_frame(first, sample_records), eg.grouped_frame(second, sample_records), k).mean():.2f}"  # noqa: E501
            rows.append({
                "class × outcome": f"{regimen_class} / {outcome}", "n": len(X),
                "additivity max error": f"{additive:.1e}", "shap TreeExplainer (GBM part)": f"{shap_error:.1e}",
                "top 3": ", ".join(table.index[:3]),
                "expected feature: rank": f"{want} {int(table.loc[want, 'rank'])}/{int(table.loc[want, 'of'])}"
                if want else "—",
                "no-effect median rank": f"{none['rank'].median():.0f}/{int(table['of'].iloc[0])}",
                "no-effect in bottom half": f"{int(none['bottom_half'].sum())}/{len(none)}",
                f"top-{k} overlap (seeds {seeds[0]},{seeds[1]})": f"{overlap.mean():.2f}",
                **grouped,
            })
            print("  no-effect ranks: " + ", ".join(f"{f} {int(r)}" for f, r in none["rank"].items()), file=sys.stderr)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 60):
        print(f"\nexplanations of the project model, simulated cohort n={args.n} seed {args.seed} "
              f"(scale: {ex.SCALE}; importance = mean |contribution|, ranks among features that vary)\n")
        print(pd.DataFrame(rows).set_index("class × outcome").T.to_string())
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


def _grouped_checks(ex, eg, model, X, contributions, records, want) -> dict[str, str]:
    """The explanation checks on the terms a clinician reads (see the module docstring)."""
    base = model.explain(X.iloc[:1])[1]
    decision = np.asarray(model.decision_function(X), dtype=float)
    shown = eg.grouped_frame(contributions, records)
    out = {"terms: additivity max error": f"{np.max(np.abs(base + shown.sum(axis=1).to_numpy() - decision)):.1e}"}
    no_effect = eg.terms_made_of(list(contributions.columns), set(ex.no_effect_features()))
    for what, table in (("terms shown", eg.term_ranks(contributions, X, records)),
                        ("terms, none pooled", eg.term_ranks(contributions, X))):
        term = eg.term_of(list(contributions.columns), want) if want else None
        out[f"{what}: top 3"] = ", ".join(table.index[:3])
        out[f"{what}: expected term rank"] = f"{term} {int(table.loc[term, 'rank'])}/{int(table['of'].iloc[0])}" \
            if term else "—"
        none = table.loc[table.index.isin(no_effect)]
        out[f"{what}: no-effect median rank"] = f"{none['rank'].median():.0f}/{int(table['of'].iloc[0])}"
        out[f"{what}: no-effect in bottom half"] = f"{int((none['rank'] > table['of'].iloc[0] / 2).sum())}/{len(none)}"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
