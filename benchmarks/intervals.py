"""Benchmark (issue 13 point 4): per-patient intervals against the population-level ECE margin, by
coverage of the simulator's true probability, side by side in one run.

Run by hand from the repository root (``--quick``: the small test config, a few minutes)::

    python benchmarks/intervals.py [--config configs/train/default.yaml] [--quick] [--repeats R]
        [--test-n 2000] [--test-seed 4242] [--bundle FILE.pkl] [--save-bundle FILE.pkl]

1. A bundle: trained with ``--config`` (``--repeats`` overrides ``cv.n_repeats`` to save time; the
   scale of the ensemble's spread is estimated inside training, out-of-fold on the *training*
   cohort's true probabilities — never on the test cohort's), in a private MLflow store in a
   temporary folder; or ``--bundle`` (a pickled ResponseModelBundle, e.g. from ``--save-bundle``).
2. A test cohort simulated with another seed (``--test-seed``), with its true probabilities for every
   patient × candidate regimen. Three versions of every patient: as recorded (the simulator's own
   missingness), sparse (each optional field additionally hidden with probability 0.5, seeded) and
   the required fields only (age, sex).
3. Per version, outcome and method: coverage of the true probability (share of patient × regimen rows
   whose interval contains it) and the mean width, in points; the target is coverage within ±5 points
   of the per-patient interval's nominal level. The ECE margin is today's population-level interval
   (probability ± the upper end of the calibration error's fold interval; no stated level).
4. The cost: median milliseconds of one patient's answer core (13 regimens, explanations, what-if
   tests) without and with the interval, as recorded and required-only.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL_KEEP = {"patient_id", "age", "sex", "cancer_type"}


def train_bundle(config: Path, repeats: int | None):
    """Train ``config`` (``cv.n_repeats`` = ``repeats`` when given) in a private MLflow store; return the bundle."""
    import logging

    from response_model.modeling.train import train

    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="intervals-benchmark-"))
    spec = yaml.safe_load(config.read_text())
    if repeats:
        spec["cv"]["n_repeats"] = repeats
    spec["registered_model"] = None
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(spec))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        started = time.perf_counter()
        result = train(path, register=False, progress=False)
        print(f"trained {config} (cv repeats {spec['cv']['n_repeats']}) in {time.perf_counter() - started:.0f} s")
    finally:
        os.chdir(cwd)
    return result.bundle


def hidden(records, share: float, seed: int):
    """Copies of ``records`` with each optional field given hidden with probability ``share``
    (``share`` = 1: the required fields only); re-validated, so derived fields follow."""
    from response_model.schema import PatientRecord

    rng = np.random.default_rng(seed)
    out = []
    for record in records:
        values = {name: getattr(record, name) for name in PatientRecord.model_fields}
        for name in list(values):
            if name not in OPTIONAL_KEEP and values[name] is not None and (share >= 1 or rng.random() < share):
                values[name] = None
        out.append(PatientRecord.model_validate(values))
    return out


def score(predictor, records):
    """(predictions, intervals) of every record under every candidate regimen."""
    predictions = predictor.predict(records)
    return predictions, predictor.intervals(records, predictions)


def ece_margin(predictor, predictions, outcome: str):
    from response_model.modeling import interpret

    half = np.array([interpret.margin(predictor.metadata, c, outcome) or np.nan for c in predictions.regimen_class])
    p = predictions.probability[outcome]
    return np.clip(p - half, 0, 1), np.clip(p + half, 0, 1)


def coverage_rows(predictor, records, truth: pd.DataFrame, version: str) -> list[dict]:
    predictions, bounds = score(predictor, records)
    ids = np.array([r.patient_id for r in records], dtype=object)[predictions.patient]
    key = pd.MultiIndex.from_arrays([ids, predictions.regimen])
    rows = []
    for outcome in ("objective_response", "primary_resistance"):
        true = truth.set_index(["patient_id", "regimen"])[f"p_{outcome}"].reindex(key).to_numpy()
        ok = np.isfinite(true) & np.isfinite(predictions.probability[outcome])
        methods = {"ECE margin (today)": ece_margin(predictor, predictions, outcome)}
        if bounds is not None:
            methods[f"per-patient {predictor.uncertainty.level:.0%}"] = bounds[outcome]
        for method, (lower, upper) in methods.items():
            inside = (lower[ok] <= true[ok]) & (true[ok] <= upper[ok])
            rows.append({"patients": version, "outcome": outcome, "method": method, "rows": int(ok.sum()),
                         "coverage %": 100 * inside.mean(), "mean width (points)": 100 * (upper[ok] - lower[ok]).mean(),
                         "median width": 100 * np.median(upper[ok] - lower[ok])})
    return rows


def timing(predictor, record, n: int = 40) -> tuple[float, float]:
    """Median ms of one answer's core without, and with, the interval."""
    from response_model.modeling import interpret

    def core():
        predictions = predictor.predict([record], explain=True)
        interpret.genomic_tests(predictor, [record], predictions)
        return predictions

    without, with_interval = [], []
    for _ in range(3):
        predictor.intervals([record], core())
    for _ in range(n):
        t0 = time.perf_counter()
        predictions = core()
        t1 = time.perf_counter()
        predictor.intervals([record], predictions)
        t2 = time.perf_counter()
        without.append(1000 * (t1 - t0))
        with_interval.append(1000 * (t2 - t0))
    return statistics.median(without), statistics.median(with_interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/train/default.yaml")
    parser.add_argument("--quick", action="store_true", help="train tests/data/train_smoke.yaml")
    parser.add_argument("--repeats", type=int, default=None, help="override cv.n_repeats (saves time)")
    parser.add_argument("--test-n", type=int, default=2000)
    parser.add_argument("--test-seed", type=int, default=4242)
    parser.add_argument("--bundle", type=Path, default=None, help="a pickled bundle instead of training")
    parser.add_argument("--save-bundle", type=Path, default=None)
    args = parser.parse_args(argv)

    from response_model.dataset import parse_cohort
    from response_model.schema import PatientRecord
    from response_model.sources.simulator import simulate_cohort

    if args.bundle:
        bundle = pickle.loads(args.bundle.read_bytes())
    else:
        bundle = train_bundle(ROOT / "tests/data/train_smoke.yaml" if args.quick else args.config, args.repeats)
        if args.save_bundle:
            args.save_bundle.write_bytes(pickle.dumps(bundle))
    predictor = bundle.predictor()
    if predictor.uncertainty is None:
        print("this bundle stores no ensemble: only the ECE margin can be shown")
    else:
        print("method:", predictor.uncertainty.method())
        print("scales:", predictor.uncertainty.metadata()["scale"])
    simulation = simulate_cohort(args.test_n, args.test_seed)
    recorded = parse_cohort(simulation.cohort).records
    versions = {"as recorded": recorded, "sparse (each optional field hidden w.p. 0.5)": hidden(recorded, 0.5, 1),
                "required fields only": hidden(recorded, 1.0, 2)}
    rows = []
    for version, records in versions.items():
        rows += coverage_rows(predictor, records, simulation.truth, version)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"\ntest cohort: n = {args.test_n} (seed {args.test_seed}), every candidate regimen; coverage of the "
          "simulator's true probability")
    print(table.round(1).to_string(index=False))
    if predictor.uncertainty is not None:
        level = 100 * predictor.uncertainty.level
        mine = table[table["method"].str.startswith("per-patient")]
        met = (mine["coverage %"] - level).abs() <= 5
        print(f"\ntarget: coverage within ±5 points of {level:.0f} %: met in {int(met.sum())} of {len(mine)} rows")
    example = recorded[0]
    sparse = PatientRecord(age=example.age, sex=example.sex)
    print("\none patient's answer core (13 regimens, explanations, what-if tests), median ms over 40:")
    for name, record in (("as recorded", example), ("required fields only", sparse)):
        without, with_interval = timing(predictor, record)
        print(f"  {name}: without interval {without:.1f} ms, with interval {with_interval:.1f} ms")
    print(f"load average: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
