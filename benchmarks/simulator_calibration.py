"""Simulator against its calibration targets, side by side for several seeds (run by hand).

    python benchmarks/simulator_calibration.py [--n 20000] [--seeds 1 2 3]

Prints one row per target (hcc-evidence.md) and one column per seed: alteration prevalences among
sequenced patients, ORR per regimen among treated patients, the checkpoint-inhibitor ORR ratio
WNT-active / not, the sorafenib PFS hazard ratio for PI3K–mTOR (Cox), the viral vs non-viral ICI
benefit, the share given a TKI by Child-Pugh class and age, missingness and the oracle AUC.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from scipy.stats import mannwhitneyu

from response_model import describe
from response_model.regimens import candidate_regimens, load_catalogue
from response_model.sources.simulator import simulate_cohort


def measure(n: int, seed: int) -> dict[str, float]:
    """Return the measured value of every calibration target for one simulated cohort."""
    started = time.perf_counter()
    sim = simulate_cohort(n, seed)
    seconds = time.perf_counter() - started
    cohort, truth = sim.cohort, sim.truth
    row: dict[str, float] = {}
    prevalence = describe.alteration_prevalence(cohort)["prevalence"]
    row.update({f"prevalence: {label}": value for label, value in prevalence.items()})
    rates = describe.response_rate_by(cohort, "regimen")["orr"]
    row.update({f"ORR: {r.name}": rates.get(r.name, np.nan) for r in candidate_regimens()})

    classes = cohort["regimen"].map({name: r.regimen_class for name, r in load_catalogue().items()})
    pathways = describe.pathway_frame(cohort)
    ici = classes == "checkpoint_inhibitor"
    by_wnt = describe.response_rate_by(cohort[ici], pathways["wnt_activation"][ici])["orr"]
    row["ICI ORR ratio, WNT-active / not"] = by_wnt.get(1.0, np.nan) / by_wnt.get(0.0, np.nan)

    sorafenib = (cohort["regimen"] == "sorafenib") & pathways["pi3k_mtor"].notna()
    frame = pd.DataFrame({"t": cohort.loc[sorafenib, "pfs_months"].astype(float),
                          "e": cohort.loc[sorafenib, "pfs_event"].astype(int),
                          "pi3k": pathways.loc[sorafenib, "pi3k_mtor"]})
    row["sorafenib PFS HR, PI3K–mTOR"] = float(np.exp(CoxPHFitter().fit(frame, "t", "e").params_["pi3k"]))

    viral = cohort["aetiology"].isin(["HBV", "HCV"])
    mean_by_class = truth.groupby(["patient_id", "regimen_class"])["p_objective_response"].mean().unstack()
    mean_by_class = mean_by_class.reindex(cohort["patient_id"]).to_numpy()
    advantage = mean_by_class[:, 0] - mean_by_class[:, 1]  # checkpoint_inhibitor − tki (alphabetical)
    row["true ICI − TKI response, viral"] = float(advantage[viral.to_numpy()].mean())
    row["true ICI − TKI response, non-viral"] = float(advantage[~viral.to_numpy()].mean())

    tki = classes == "tki_antiangiogenic"
    row["TKI share, Child-Pugh A"] = float(tki[cohort["child_pugh_class"] == "A"].mean())
    row["TKI share, Child-Pugh B"] = float(tki[cohort["child_pugh_class"] == "B"].mean())
    row["TKI share, age < 75"] = float(tki[cohort["age"] < 75].mean())
    row["TKI share, age ≥ 75"] = float(tki[cohort["age"] >= 75].mean())
    row["missing: PD-L1"] = float(cohort["pdl1_tps"].isna().mean())
    row["missing: genomics"] = float(cohort["alterations"].isna().mean())

    given = truth[truth["given"]].set_index("patient_id").reindex(cohort["patient_id"])
    labelled = cohort["objective_response"].notna().to_numpy()
    y = cohort["objective_response"].to_numpy(dtype=float)[labelled]
    p = given["p_objective_response"].to_numpy()[labelled]
    u = mannwhitneyu(p[y == 1], p[y == 0]).statistic
    row["oracle AUC"] = float(u / ((y == 1).sum() * (y == 0).sum()))
    row["seconds to simulate"] = seconds
    return row


def targets() -> dict[str, str]:
    """Return the target of each row, as text."""
    out = {f"prevalence: {label}": f"{value:.3f} ± 0.03" for label, value in describe.literature_prevalence().items()}
    out.update({f"ORR: {r.name}": f"{r.trial['orr']:.3f} ± 0.03" for r in candidate_regimens()})
    out.update({
        "ICI ORR ratio, WNT-active / not": "≤ 0.333",
        "sorafenib PFS HR, PI3K–mTOR": "about 3–4 (3.8)",
        "true ICI − TKI response, viral": "> non-viral",
        "true ICI − TKI response, non-viral": "< viral",
        "TKI share, Child-Pugh A": "< Child-Pugh B",
        "TKI share, Child-Pugh B": "> Child-Pugh A",
        "TKI share, age < 75": "< age ≥ 75",
        "TKI share, age ≥ 75": "> age < 75",
        "missing: PD-L1": "≥ 0.50",
        "missing: genomics": "> 0",
        "oracle AUC": "0.70–0.85",
        "seconds to simulate": "",
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    table = pd.DataFrame({f"seed {seed}": measure(args.n, seed) for seed in args.seeds})
    table.insert(0, "target", pd.Series(targets()))
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.float_format", "{:.3f}".format):
        print(f"simulator at n = {args.n}")
        print(table)


if __name__ == "__main__":
    main()
