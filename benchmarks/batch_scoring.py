"""Benchmark: batch scoring end to end against the physical limit of the same machine.

Run by hand from the repository root (long at 10^6: use ``nice`` on a shared machine)::

    python benchmarks/batch_scoring.py [--sizes 10000 100000] [--model-uri URI] [--workers 2]
        [--partition-rows 5000] [--no-explain] [--csv]

What is timed, per cohort size and with / without explanations: ``response-model score``'s library
call (:func:`response_model.modeling.batch.score_file`) end to end — a new LocalCluster of
``--workers`` workers started (worker processes, or threads of this process when
``modeling.batch.use_threads`` expects them to be sooner, as ``score`` does by default: column
``cluster``), the bundle's Predictor sent to them, the input Parquet (or CSV) file read in partitions, every
row validated into a PatientRecord, features built, every candidate regimen scored (and explained),
ranks computed, the output Parquet file written. Reported: patient-regimen scores (output rows)
per second, and the peak resident memory of the whole process tree (this process, the nannies and
the workers; psutil sampled every 50 ms), plus the growth exponent between sizes (time ∝ n^k).

The physical limit beside it: the bare LightGBM boosters of the bundle predicting the feature
matrix that is already built (``Booster.predict`` on a NumPy array; the better of one thread and
all cores, measured just before each run), and with explanations their own ``pred_contrib``:
patient-regimen rows per second, where each row needs both outcome models of its regimen class.
(The bundle's models are ensembles — a logistic part
plus LightGBM — so the end-to-end path also does the logistic part; the limit leaves it out. The
end-to-end path evaluates the same trees, grouped: the trees that split on no regimen feature once per
patient, the others once per patient and value of their regimen features — see
``modeling/compiled.group_trees`` — so its tree work is a fraction of the limit's row-by-row work.)
Target: end to end at least half of that limit; peak memory bounded by the partition size, not by
the cohort size.

Cohorts: one simulated cohort of ``--base`` patients (seed ``--seed``), repeated with new patient
ids up to each size (simulating 10^6 patients would take longer than scoring them; the scoring
cost per row does not depend on whether rows repeat). Model: ``--model-uri``, else a model trained
here once (not timed) with ``tests/data/train_smoke.yaml`` made realistic: 300 trees of 4 leaves
(the default configuration's leaves; its search chooses 200 or 300 trees).

Earlier measurements, and what each speed-up changed, are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Samples the resident memory (MB) of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._root, self._interval = psutil.Process(), interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        import psutil

        total = 0
        for process in [self._root, *self._root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._sample())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def train_model(folder: Path):
    """Train the benchmark bundle (smoke config with 300 trees of 4 leaves) in a throw-away MLflow store;
    the bundle is also saved as a model folder in ``folder/model`` (reuse it with ``--model-uri``)."""
    from response_model.dataset import row_to_record
    from response_model.modeling.bundle import example_input, save_bundle
    from response_model.modeling.train import train
    from response_model.sources.simulator import simulate_cohort

    settings = yaml.safe_load((ROOT / "tests" / "data" / "train_smoke.yaml").read_text())
    settings["model"]["defaults"].update({"n_estimators": 300, "num_leaves": 4, "min_child_samples": 20})
    settings["cv"] = {"n_splits": 2, "n_repeats": 1, "seed": 0}
    settings["data"]["simulate"] = {"n": 4000, "seed": 3}
    config = folder / "bench.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ.setdefault("RESPONSE_MODEL_PSEUDONYM_KEY", "benchmark-pseudonym-key-0123456789")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        bundle = train(config, register=False, progress=False).bundle
    finally:
        os.chdir(previous)
    records = [row_to_record(r) for r in simulate_cohort(5, 0).cohort.to_dict(orient="records")]
    print(f"benchmark model saved to {save_bundle(bundle, folder / 'model', example_input(records))}")
    return bundle


def write_cohort_file(base_table: pa.Table, n: int, path: Path, csv: bool) -> Path:
    """Write ``n`` patients (``base_table`` repeated, fresh patient ids) to Parquet or CSV, chunk by chunk."""
    ids = base_table.schema.get_field_index("patient_id")
    writer = None
    written = 0
    with open(path, "w", encoding="utf-8") if csv else _nothing() as handle:
        while written < n:
            chunk = base_table.slice(0, min(len(base_table), n - written))
            chunk = chunk.set_column(ids, "patient_id",
                                     pa.array([f"B{written + i:08d}" for i in range(len(chunk))], pa.string()))
            if csv:
                chunk.to_pandas().to_csv(handle, header=written == 0, index=False)
            else:
                writer = writer or pq.ParquetWriter(path, chunk.schema, compression="zstd")
                writer.write_table(chunk)
            written += len(chunk)
    if writer is not None:
        writer.close()
    return path


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def physical_limit(bundle, records, explain: bool, threads: int, min_seconds: float = 1.0) -> float:
    """Patient-regimen rows per second of the bare boosters on the built feature matrix (both outcomes),
    the better of one OpenMP thread and ``threads`` (on a loaded machine more threads can be slower)."""
    return max(_booster_rate(bundle, records, explain, t, min_seconds) for t in sorted({1, threads}))


def _booster_rate(bundle, records, explain: bool, threads: int, min_seconds: float) -> float:
    predictions = bundle.predictor().predict(records)
    X = predictions.features.frame()
    total = 0.0
    for (regimen_class, _outcome), model in bundle.models.items():
        booster = model.gbm_.booster_
        mask = predictions.regimen_class == regimen_class
        matrix = np.ascontiguousarray(X.loc[mask, list(model.gbm_features_)].to_numpy(np.float64))
        booster.predict(matrix[:100], num_threads=threads, pred_contrib=explain)  # warm-up
        runs, started = 0, time.perf_counter()
        while True:
            booster.predict(matrix, num_threads=threads, pred_contrib=explain)
            runs += 1
            took = time.perf_counter() - started
            if took >= min_seconds:
                break
        total += took / runs
    return len(predictions) / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partition-rows", type=int, default=5000)
    parser.add_argument("--base", type=int, default=10_000, help="simulated patients repeated up to each size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--explain-sizes", type=int, nargs="+", default=None,
                        help="sizes to run with explanations (default: --sizes)")
    parser.add_argument("--no-explain", action="store_true", help="only without explanations")
    parser.add_argument("--only-explain", action="store_true", help="only with explanations")
    parser.add_argument("--csv", action="store_true", help="CSV input instead of Parquet")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    import pandas as pd

    from response_model.dataset import normalise_frame, row_to_record
    from response_model.modeling.batch import score_file
    from response_model.modeling.predict import as_bundle, load_model
    from response_model.sources.simulator import simulate_cohort

    tmp = Path(tempfile.mkdtemp(prefix="batch-scoring-"))
    started = time.perf_counter()
    bundle = as_bundle(load_model(args.model_uri)) if args.model_uri else train_model(tmp)
    trees = {key: m.gbm_.booster_.num_trees() for key, m in bundle.models.items()}
    print(f"model: {args.model_uri or 'trained here'} ({time.perf_counter() - started:.0f} s); trees per model: "
          f"{sorted(set(trees.values()))}; {len(bundle.candidate_regimens())} candidate regimens per patient")
    base = simulate_cohort(args.base, args.seed).cohort
    base_table = pa.Table.from_pandas(normalise_frame(base), preserve_index=False)
    sample = [row_to_record(r) for r in base.head(2000).to_dict(orient="records")]
    threads = os.cpu_count() or 1
    print(f"load average before: {os.getloadavg()[0]:.1f} on {threads} cores")

    modes = [False, True]
    if args.no_explain:
        modes = [False]
    if args.only_explain:
        modes = [True]
    rows = []
    paths = {n: write_cohort_file(base_table, n, tmp / f"cohort-{n}.{'csv' if args.csv else 'parquet'}", args.csv)
             for n in args.sizes}
    for explain in modes:  # every size without explanations first: the quicker half of the table
        for n, path in paths.items():
            if explain and args.explain_sizes is not None and n not in args.explain_sizes:
                continue
            # the limit measured just before each run: on a shared machine the load changes by the minute
            limit = physical_limit(bundle, sample, explain, threads)
            out = tmp / f"scores-{n}-{int(explain)}.parquet"
            with PeakMemory() as memory:
                result = score_file(bundle, path, out, explain=explain, n_workers=args.workers,
                                    partition_rows=args.partition_rows, progress=False)
            rate = result.scores_per_second
            rows.append({"patients": n, "explain": explain, "cluster": result.cluster.replace("local ", ""),
                         "rows": result.n_rows, "seconds": result.seconds,
                         "startup_s": result.startup_seconds, "scores_per_s": rate, "limit_per_s": limit,
                         "share_of_limit": rate / limit, "peak_tree_MB": memory.peak_mb,
                         "output_MB": out.stat().st_size / 2**20, "load": os.getloadavg()[0]})
            print(f"  n={n:>9,} explain={explain!s:<5} {result.cluster:<15} {result.seconds:8.1f} s "
                  f"(start-up {result.startup_seconds:.1f} s) "
                  f"{rate:10,.0f} scores/s  limit {limit:10,.0f}  peak {memory.peak_mb:7.0f} MB  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            out.unlink()
    for path in paths.values():
        path.unlink()

    table = pd.DataFrame(rows)
    for _explain, part in table.groupby("explain"):
        part = part.sort_values("patients")
        # time ∝ n^k between consecutive sizes, of the whole run and of the part after start-up
        for column, seconds in (("growth_k", part["seconds"]), ("growth_k_after_startup",
                                                               part["seconds"] - part["startup_s"])):
            k = [math.nan] + [math.log(b / a) / math.log(m / n) for a, b, n, m in
                              zip(seconds, seconds.iloc[1:], part["patients"], part["patients"].iloc[1:])]
            table.loc[part.index, column] = k
    print()
    print(f"batch scoring end to end ({args.workers} workers, partitions of {args.partition_rows} patients, "
          f"{'CSV' if args.csv else 'Parquet'} in, Parquet out) vs the bare boosters")
    shown = table.assign(**{c: table[c].map("{:.2f}".format)
                            for c in ("share_of_limit", "growth_k", "growth_k_after_startup", "load")})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    for explain, part in table.groupby("explain"):
        verdict = "met" if (part["share_of_limit"] >= 0.5).all() else "NOT met"
        print(f"target ≥ 0.5 × limit {'with' if explain else 'without'} explanations: {verdict} "
              f"(min share {part['share_of_limit'].min():.2f})")
    spread = table.groupby("explain")["peak_tree_MB"].agg(["min", "max"])
    print("peak memory (MB, whole process tree) across sizes:", {bool(k): (round(v["min"]), round(v["max"]))
                                                                  for k, v in spread.iterrows()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
