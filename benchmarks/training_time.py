"""Benchmark 6d: wall-clock time of the full default training as the cohort grows.

Run by hand from the repository root (long: use ``nice`` on a shared machine)::

    nice python benchmarks/training_time.py [--sizes 1000 5000 20000] [--config configs/train/default.yaml]
        [--cv-jobs 1]

For each size: simulate a cohort (seed ``--seed``), write it with ``write_simulation`` into a
temporary folder, then time ``train(config, data_path=<cohort.parquet>)`` — every regimen class,
both outcomes, repeated CV with the nested search, SHAP plots, MLflow logging and registration —
into a throw-away MLflow store (``sqlite:///<tmpdir>/mlflow.db``, artifacts under the tmpdir, the
process's working directory moved there while training). Simulation and writing are not timed.
``--cv-jobs`` overrides the config's ``cv.n_jobs`` (parallel fold processes; default 1, so that the
benchmark does not take both cores of a shared machine; ``config`` keeps the config's value) — the
config is then copied, so changed, into the temporary folder.
Prints, per size, wall-clock and CPU seconds of the process (all its threads: LightGBM runs with
one thread, but BLAS inside the logistic parts may use more, so CPU time can exceed wall-clock
time; on a busy shared machine it shows how much of the wall-clock time was waiting), the part
spent cross-validating the project's model (its nested search included) and the baselines
(``cv_*_s``: summed fit times; with parallel folds they add up across processes), the rest
(features, final refits, SHAP, logging; only with serial folds), the growth factor between consecutive sizes and its
exponent (time ∝ n^k), and whether the target (≤ 3 minutes at 5,000 patients) is met.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_N, TARGET_SECONDS = 5000, 180.0


def time_training(n: int, seed: int, config: Path, progress: bool = False, cv_jobs: int | None = 1) -> dict[str, float]:
    """Simulate ``n`` patients, train ``config`` on them in a temporary MLflow store; return timings."""
    from response_model.modeling.train import train
    from response_model.sources.simulator import simulate_cohort, write_simulation

    previous_cwd, previous_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix=f"training-time-{n}-") as tmp:
        started = time.perf_counter()
        written = write_simulation(simulate_cohort(n, seed), Path(tmp) / "cohort")
        simulate_seconds = time.perf_counter() - started
        if cv_jobs is not None:
            settings = yaml.safe_load(config.read_text())
            settings.setdefault("cv", {})["n_jobs"] = int(cv_jobs)
            config = Path(tmp) / config.name
            config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
        jobs = int((yaml.safe_load(config.read_text()).get("cv") or {}).get("n_jobs", 1))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                started, cpu_started = time.perf_counter(), time.process_time()
                result = train(config, data_path=written["cohort"], register=True, progress=progress)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            os.chdir(previous_cwd)
            if previous_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_uri
    models = len(result.cv)
    # where the time went: CV fitting of the project's model (its nested search included) and of the
    # baselines, summed over folds (per-process fit time); the rest is features, final refits, SHAP, logging
    project = sum(cv.seconds.get("project", 0.0) for cv in result.cv.values())
    baselines = sum(v for cv in result.cv.values() for k, v in cv.seconds.items() if k != "project")
    return {"n": n, "simulate_s": simulate_seconds, "train_s": seconds, "cpu_s": cpu_seconds, "models": models,
            "per_model_s": seconds / max(models, 1), "cv_project_s": project, "cv_baselines_s": baselines,
            "other_s": seconds - project - baselines if jobs == 1 else math.nan, "cv_jobs": jobs}


def table(rows: list[dict[str, float]]) -> pd.DataFrame:
    """Return the printable table: seconds, minutes, growth factor and exponent vs the previous size."""
    frame = pd.DataFrame(rows).sort_values("n").reset_index(drop=True)
    growth, exponent = [math.nan], [math.nan]
    for a, b in zip(frame.iloc[:-1].itertuples(), frame.iloc[1:].itertuples()):
        growth.append(b.train_s / a.train_s)
        exponent.append(math.log(b.train_s / a.train_s) / math.log(b.n / a.n))
    frame["minutes"] = frame["train_s"] / 60.0
    frame["growth vs previous"] = growth
    frame["exponent k (t ∝ n^k)"] = exponent
    columns = ["n", "models", "cv_jobs", "train_s", "cpu_s", "minutes", "per_model_s", "growth vs previous",
               "exponent k (t ∝ n^k)", "cv_project_s", "cv_baselines_s", "other_s", "simulate_s"]
    return frame[[c for c in columns if c in frame]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--progress", action="store_true", help="show the CV progress bars")
    parser.add_argument("--cv-jobs", default="1",
                        help="parallel CV fold processes (overrides cv.n_jobs); 'config' keeps the config's value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    config = Path(args.config).resolve()
    if not config.exists():
        print(f"config not found: {config}", file=sys.stderr)
        return 2

    cv_jobs = None if args.cv_jobs == "config" else int(args.cv_jobs)
    rows = []
    for n in sorted(args.sizes):
        row = time_training(n, args.seed, config, progress=args.progress, cv_jobs=cv_jobs)
        rows.append(row)
        print(f"n = {n:>6}: trained {row['models']} class × outcome models in {row['train_s']:.1f} s "
              f"({row['train_s'] / 60:.2f} min; CPU {row['cpu_s']:.1f} s; "
              f"simulation {row['simulate_s']:.1f} s, not timed)", flush=True)
    out = table(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
        print(f"\nfull training ({shown}: every class and "
              "outcome, CV and search as configured, SHAP, MLflow logging and registration; "
              f"cv.n_jobs {'from the config' if cv_jobs is None else cv_jobs}), "
              f"{os.cpu_count()} CPU(s) visible\n")
        print(out.to_string(index=False))
    if cv_jobs != 1:
        print("note: CPU seconds count the main process only; fold workers (cv.n_jobs > 1) are not included")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} — wall-clock "
              "time includes waiting for the CPU when the machine is shared")
    at_target = out[out["n"] == TARGET_N]
    if len(at_target):
        seconds = float(at_target["train_s"].iloc[0])
        print(f"\ntarget (≤ {TARGET_SECONDS / 60:.0f} min at n = {TARGET_N}): "
              f"{'MET' if seconds <= TARGET_SECONDS else 'NOT MET'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
