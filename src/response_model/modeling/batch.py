"""Batch scoring of a cohort file (Parquet or CSV, any size) on Dask: ``response-model score``.

The client reads the input in partitions of ``partition_rows`` patients (pyarrow row batches for
Parquet, pandas chunks for CSV), submits each partition as one Dask task and writes the results
in input order as they come back, keeping at most ``2 × worker threads`` partitions in flight: peak
memory grows with the partition size, not with the cohort. Reading in the client (rather than with
``dask.dataframe`` on the workers) keeps exact input row numbers for rejected rows and needs no
file system shared with a remote cluster; the workers only compute.

Each task turns its rows into :class:`~response_model.schema.PatientRecord` (the one schema; a row
that fails validation is reported with its row number and the field-level messages, never dropped
silently) and scores them with the bundle's
:class:`~response_model.modeling.predictor.Predictor`, as the prediction service does, so the
numbers are the API's. The workers get the Predictor — loaded without MLflow or the training
code — once each (``Client.scatter(broadcast=True)``), not with every task. Workers are spawned,
not forked: forked workers were seen to stall with explanations after the client had run
LightGBM's OpenMP threads (GNU OpenMP is not fork-safe).
Parquet partitions travel as Arrow record batches and results for Parquet output come back as Arrow
tables, so the client only reads and writes.

Output: one row per patient × candidate regimen, in input order — ``input_row`` (0-based position
of the patient among the data rows of the input), ``patient_id`` (as given in the input: the file
goes back to the data owner; ids never go to the logs), ``regimen``, ``regimen_class``,
``eligible``, ``ineligible_reason``, ``p_objective_response``, ``p_primary_resistance``, ``rank``
(as the API ranks: :func:`response_model.modeling.interpret.ranks`; null when ineligible or withheld),
``validation`` (the regimen's per-regimen gate status: validated, failed, too_few, unchecked) and
``validation_warning`` (why it is not validated, naming the metric; the probabilities of a regimen the
gate withholds are null; an ``unrecorded`` row has its mix's worst status and names each member not
validated) and,
for models trained on simulated data, ``label``. With ``intervals=True`` (optional: it costs several
times the scoring) each row's per-patient interval — ``p_<outcome>_lower``, ``p_<outcome>_upper`` and
``interval_level`` (its nominal coverage, 0–1; all null for a bundle without an ensemble) — as the API
gives it (:mod:`response_model.modeling.uncertainty`), before the API's rounding. With ``explain=True`` every
feature's contribution from the model's own ``explain`` (log-odds scale; the values the audit
trail keeps for each API prediction) as wide columns ``shap_<outcome>__<feature>`` plus
``shap_<outcome>__base_value``; a feature a model's explanation does not cover is null. The same
values summed into the terms a clinician reads follow
(:func:`response_model.modeling.explanation_groups.batch_columns`): ``term_<outcome>__<term>`` for
every term (``regimen``, ``albi``, …) then ``term_<outcome>__not_recorded``, so base value + Σ terms
= base value + Σ features; and ``not_recorded``, the labels of the patient's missing inputs. Parquet
output is one file written row group by row group; the model name, version, URI and label are
also in its key-value metadata.

Rejected rows go to ``<output>.rejected.csv`` (``input_row``, ``line`` — the row as ``validate`` numbers
it: the file line of a CSV file, header = line 1; the 1-based data row of a Parquet file — ``patient_id``,
``errors``; rows read through a source config carry the source's line in their errors instead).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from response_model.dataset import (
    COHORT_COLUMNS,
    INPUT_FIELDS,
    _clean,
    clean_row_to_record,
)
from response_model.modeling import explanation_groups
from response_model.modeling.predictor import Predictor
from response_model.modeling.regimen_validation import answer_validation, mixture_validation
from response_model.schema import OUTCOMES, PatientRecord, field_errors

log = logging.getLogger(__name__)

DEFAULT_PARTITION_ROWS = 5_000
#: Up to this many partitions per worker, an own cluster is threads of this process (see :func:`use_threads`).
SMALL_INPUT_PARTITIONS = 2
#: With two workers, threads up to this many partitions: below it, two threads finish sooner than two
#: worker processes start and work (``benchmarks/batch_scoring.py``; docs/performance.md).
TWO_THREADS_UP_TO_PARTITIONS = 30
#: A CSV file's rows are bounded by counting its line breaks up to this size (a count that takes a
#: small fraction of scoring the file), so that :func:`use_threads` can choose for it too.
CSV_COUNTED_UP_TO_BYTES = 64 * 2**20
#: Notice of a source table whose rows have no regimen: score_file then adds the ``unrecorded`` rows.
NO_REGIMEN_NOTICE = ("no row records a regimen: each patient also gets one row per regimen class with regimen "
                     "'unrecorded', the estimate averaged over the class's regimens weighted by their training "
                     "prevalence")
SHAP_PREFIX = "shap_"
BASE_VALUE = "base_value"


class BatchInputError(ValueError):
    """The input file cannot be read as a cohort table (format, columns); names the file."""


@dataclass
class BatchResult:
    """What :func:`score_file` did: counts, where it wrote, and how long it took (seconds)."""

    output: Path
    rejected_path: Path | None
    n_read: int = 0
    n_scored: int = 0
    n_rejected: int = 0
    n_rows: int = 0
    partitions: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # of ``seconds``: loading the model, starting the cluster, sending it the model
    cluster: str = ""  # "local processes", "local threads" or "given" (a client or a scheduler)
    rejected_preview: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # the source's file-level notices, the unrecorded regimen

    @property
    def scores_per_second(self) -> float:
        """Patient-regimen rows written per second, end to end."""
        return self.n_rows / self.seconds if self.seconds > 0 else math.nan


# -- scoring one partition (runs on a worker) ---------------------------------------------------


def shap_column(outcome: str, feature: str) -> str:
    """Name of the output column holding ``feature``'s SHAP value for ``outcome``."""
    return f"{SHAP_PREFIX}{outcome}__{feature}"


def shap_columns(predictor: Predictor) -> list[str]:
    """Every SHAP column of the output for ``predictor``: each outcome × (every feature in the bundle's
    order, then the base value). A feature a model's explanation does not cover stays null."""
    return [shap_column(o, f) for o in OUTCOMES for f in [*predictor.feature_names, BASE_VALUE]]


def interval_columns() -> list[str]:
    """The per-patient interval's output columns (see the module docstring)."""
    return [f"p_{o}_{end}" for o in OUTCOMES for end in ("lower", "upper")] + ["interval_level"]


def score_table(predictor: Predictor, records: Sequence[PatientRecord], explain: bool = False,
                unrecorded: bool = False, intervals: bool = False) -> pd.DataFrame:
    """Score ``records`` under every candidate regimen; return the long table (see the module docstring;
    ``row`` is the position of the record in ``records``). With ``unrecorded`` each record also gets, after
    its candidates, one row per regimen class with ``regimen`` = ``unrecorded``: the training mix of the
    class (:mod:`response_model.modeling.unknown_regimen`), rank null (and no interval)."""
    records = list(records)
    predictions = predictor.predict(records, explain=explain)
    scores = predictions.table()
    rank = pd.array(predictions.rank, dtype="Int64")
    rank[predictions.rank == 0] = pd.NA  # ineligible, or withheld by the per-regimen gate
    scores["rank"] = rank
    scores["warnings"] = _warnings(records, predictions.patient)
    validation = {name: answer_validation(predictor.metadata, name) for name in set(predictions.regimen.tolist())}
    scores["validation"] = [validation[name]["status"] for name in predictions.regimen]
    scores["validation_warning"] = [validation[name]["warning"] for name in predictions.regimen]
    if intervals:
        bounds = predictor.intervals(records, predictions)
        for outcome in OUTCOMES:
            lower, upper = bounds[outcome] if bounds else (np.full(len(scores), np.nan),) * 2
            scores[f"p_{outcome}_lower"], scores[f"p_{outcome}_upper"] = lower, upper
        scores["interval_level"] = predictor.uncertainty.level if bounds else np.nan
    if explain:
        terms = explanation_groups.batch_columns(predictions, records, predictor.feature_names, OUTCOMES)
        scores = pd.concat([scores, _shap_frame(predictor, len(scores), [
            (outcome, explained) for (_, outcome), explained in predictions.explanations.items()]), terms], axis=1)
    if unrecorded and len(records):
        mixed = [_unrecorded_rows(predictor, records, regimen_class, explain)
                 for regimen_class in predictor.regimen_classes]
        scores = pd.concat([scores, *mixed], ignore_index=True).sort_values("row", kind="stable")
        scores = scores.reset_index(drop=True)
    return scores


def _warnings(records: Sequence[PatientRecord], patient: np.ndarray, extra: str | None = None) -> np.ndarray:
    """The ``; ``-joined warnings of each row's record (None when there are none), plus ``extra``."""
    texts = ["; ".join(r.warnings() + ([extra] if extra else [])) or None for r in records]
    return np.array(texts, dtype=object)[patient] if len(patient) else np.array([], dtype=object)


def _shap_frame(predictor: Predictor, n_rows: int, explanations: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """The SHAP columns of ``n_rows`` output rows from (outcome, Explanation) pairs (a feature not covered: NaN)."""
    columns = shap_columns(predictor)
    values = np.full((n_rows, len(columns)), np.nan)
    position = {name: j for j, name in enumerate(columns)}
    for outcome, explained in explanations:
        targets = [position[shap_column(outcome, str(f))] for f in explained.names]
        values[np.ix_(explained.rows, targets)] = explained.values
        values[explained.rows, position[shap_column(outcome, BASE_VALUE)]] = explained.base_value
    return pd.DataFrame(values, columns=columns)


def _unrecorded_rows(predictor: Predictor, records: Sequence[PatientRecord], regimen_class: str,
                     explain: bool) -> pd.DataFrame:
    """One row per record: its estimate under the training mix of ``regimen_class``, with the warning."""
    from response_model.modeling.unknown_regimen import UNKNOWN_REGIMEN, predict_unknown_regimen

    mixed = predict_unknown_regimen(predictor, records, regimen_class, explain=explain)
    n = len(records)
    table = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "regimen": UNKNOWN_REGIMEN,
                          "regimen_class": regimen_class, "eligible": True, "ineligible_reason": None,
                          **{f"p_{o}": mixed.probability[o] for o in OUTCOMES}})
    table["rank"] = pd.array([pd.NA] * n, dtype="Int64")
    table["warnings"] = _warnings(records, np.arange(n), mixed.warning)
    validation = mixture_validation(predictor.metadata, mixed.weights)
    table["validation"], table["validation_warning"] = validation["status"], validation["warning"]
    if explain:
        table = pd.concat([table, _shap_frame(predictor, n, list(mixed.explanations.items()))], axis=1)
    return table


def score_partition(
    predictor: Predictor, frame: pd.DataFrame, input_rows: np.ndarray, explain: bool = False,
    unrecorded: bool = False,
    intervals: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate and score one partition; return (output table, rejected rows).

    ``frame`` holds patient-record columns (strings or typed values); ``input_rows`` the input row
    number of each of its rows. The rejected table has ``input_row``, ``patient_id`` and
    ``errors`` (every field-level message of the row, ``; ``-separated).
    """
    records: list[PatientRecord] = []
    kept: list[int] = []
    rejected: list[dict[str, Any]] = []
    ids = [_id_text(v) for v in frame["patient_id"].tolist()] if "patient_id" in frame.columns else [None] * len(frame)
    # the rows cleaned column by column (what ``row_to_record`` does to each value of
    # ``to_dict(orient="records")``, without the per-row pandas and per-value work), then validated
    # one by one by the same conversion (``clean_row_to_record``)
    names = [name for name in INPUT_FIELDS if name in frame.columns]
    columns = [_clean_column(frame[name]) for name in names]
    for position, values in enumerate(zip(*columns)):
        try:
            records.append(clean_row_to_record({n: v for n, v in zip(names, values) if v is not None}))
            kept.append(position)
        except ValidationError as error:
            rejected.append({"input_row": int(input_rows[position]), "patient_id": ids[position],
                             "errors": "; ".join(str(e) for e in field_errors(error))})
    table = score_table(predictor, records, explain, unrecorded, intervals)
    kept_rows = np.asarray(input_rows)[kept]
    kept_ids = [ids[k] for k in kept]
    positions = table.pop("row").to_numpy()
    table.insert(0, "input_row", kept_rows[positions].astype(np.int64) if len(positions) else np.array([], np.int64))
    table.insert(1, "patient_id", np.array(kept_ids, dtype=object)[positions])
    label = predictor.metadata.get("label")
    if label:
        table.insert(table.columns.get_loc("rank") + 1, "label", label)
    rejected_frame = pd.DataFrame(rejected, columns=["input_row", "patient_id", "errors"])
    return table, rejected_frame


def _clean_column(column: pd.Series) -> list[Any]:
    """The values of ``column`` as ``row_to_record`` cleans them: Python scalars, None for missing."""
    dtype = column.dtype
    if isinstance(dtype, pd.core.dtypes.dtypes.BaseMaskedDtype) and dtype.kind in "iub":
        return column.to_numpy(dtype=object, na_value=None).tolist()  # Int64, boolean: pd.NA -> None
    values = column.tolist()  # Python scalars for NumPy's numeric and boolean dtypes
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return [None if v != v else v for v in values]  # NaN -> None
    if isinstance(dtype, np.dtype) and dtype.kind in "iub":
        return values
    # object and other dtypes value by value
    return [v if v is None or type(v) is str else _clean(v) for v in values]


def _score_task(
    predictor: Predictor, frame: pd.DataFrame | pa.RecordBatch, input_rows: np.ndarray, explain: bool,
    arrow: bool, unrecorded: bool = False, intervals: bool = False,
) -> tuple[pd.DataFrame | pa.Table, pd.DataFrame]:
    """:func:`score_partition` as a Dask task: the partition may come as an Arrow record batch (cheaper
    to send than a DataFrame of strings; turned into pandas here, as :func:`read_partitions` would),
    and with ``arrow=True`` the output comes back as the Arrow table the Parquet writer takes, so the
    client only writes it."""
    if isinstance(frame, pa.RecordBatch):
        frame = frame.to_pandas()
    collecting = gc.isenabled()
    gc.disable()  # the partition's many short-lived objects hold no cycles: no collector passes over them
    try:
        table, rejected = score_partition(predictor, frame, input_rows, explain, unrecorded, intervals)
    finally:
        if collecting:
            gc.enable()
    if arrow:
        # nthreads=1: Arrow's own conversion threads would only compete with the other partitions'
        table = pa.Table.from_pandas(table, schema=_arrow_schema(table, {}), preserve_index=False, nthreads=1)
    return table, rejected


def _id_text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


# -- reading ------------------------------------------------------------------------------------


@dataclass
class Partition:
    """One partition of the input: its rows (patient-record columns) and their input row numbers."""

    index: int
    frame: pd.DataFrame
    input_rows: np.ndarray


def _check_columns(path: Path, columns: Sequence[str]) -> list[str]:
    """The patient-record columns to read; raises BatchInputError on unknown columns or no age/sex."""
    unknown = [c for c in columns if c not in COHORT_COLUMNS]
    if unknown:
        raise BatchInputError(
            f"{path}: unexpected column(s) {', '.join(unknown)}; expected patient-record columns of the "
            f"canonical cohort table (map other tables with --source CONFIG, or `response-model ingest`)")
    missing = [c for c in ("age", "sex") if c not in columns]
    if missing:
        raise BatchInputError(f"{path}: lacks the required column(s) {', '.join(missing)}")
    return [c for c in columns if c in INPUT_FIELDS]


def input_format(path: str | Path) -> str:
    """``parquet`` or ``csv`` from the file name (``.parquet``/``.pq``, ``.csv``/``.csv.gz``/``.tsv``)."""
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    raise BatchInputError(f"{path}: unknown file type; expected .parquet or .csv")


def count_rows(path: str | Path) -> int | None:
    """Number of data rows of a Parquet file (from its footer), None for CSV (unknown without reading)."""
    if input_format(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


def rows_at_most(path: str | Path) -> int | None:
    """At least the number of data rows: a Parquet file's count; for an uncompressed CSV file of at
    most :data:`CSV_COUNTED_UP_TO_BYTES`, its line breaks (never fewer than the data rows: the header's
    makes up for a last line without one, and a break inside quotes counts too); else None."""
    rows = count_rows(path)
    if rows is not None or str(path).lower().endswith(".gz"):
        return rows
    if Path(path).stat().st_size > CSV_COUNTED_UP_TO_BYTES:
        return None
    breaks = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(2**20):
            breaks += chunk.count(b"\n")
    return breaks


def read_partitions(path: str | Path, partition_rows: int = DEFAULT_PARTITION_ROWS,
                    arrow: bool = False) -> Iterator[Partition]:
    """Yield the partitions of a Parquet or CSV cohort file, ``partition_rows`` patients each.

    ``arrow=True``: a Parquet file's partitions as Arrow record batches (``to_pandas()`` gives the
    DataFrame); CSV partitions are always DataFrames. CSV cells are read as text (a value that is
    not a number reaches the schema, which names it); empty cells are missing. Raises BatchInputError
    for an unreadable file or unexpected columns.
    """
    path = Path(path)
    if not path.exists():
        raise BatchInputError(f"{path}: no such file")
    start = 0
    if input_format(path) == "parquet":
        try:
            handle = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise BatchInputError(f"{path}: not a readable Parquet file ({error})") from None
        columns = _check_columns(path, handle.schema_arrow.names)
        batches = handle.iter_batches(batch_size=partition_rows, columns=columns)
        for index, batch in enumerate(batches):
            frame = batch if arrow else batch.to_pandas()
            yield Partition(index, frame, np.arange(start, start + len(frame), dtype=np.int64))
            start += len(frame)
        return
    sep = "\t" if str(path).lower().endswith(".tsv") else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns.tolist()
        columns = _check_columns(path, header)
        reader = pd.read_csv(path, sep=sep, dtype=str, usecols=columns, chunksize=partition_rows)
        for index, frame in enumerate(reader):
            frame = frame.reset_index(drop=True).astype(object).where(frame.notna().to_numpy(), None)
            yield Partition(index, frame, np.arange(start, start + len(frame), dtype=np.int64))
            start += len(frame)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise BatchInputError(f"{path}: not a readable CSV file ({error})") from None


def source_partitions(source: str, path: str | Path, partition_rows: int = DEFAULT_PARTITION_ROWS,
                      notices: list[str] | None = None) -> tuple[Iterator[Partition], pd.DataFrame, int]:
    """(partitions of the valid rows, rejected rows, rows read) of a table read through a source config;
    the source's notices (and, when no valid row has a regimen, :data:`NO_REGIMEN_NOTICE`) are appended
    to ``notices``.

    The source reads the whole table in memory (as ``validate`` and ``ingest`` do): for cohorts
    too large for that, ``ingest`` them into canonical Parquet once and score that file.
    """
    from response_model.dataset import record_to_row
    from response_model.sources import load_source

    parsed = load_source(source, path).parsed
    if notices is not None:
        notices += parsed.notices
        if parsed.outcomes and all(out.regimen is None for out in parsed.outcomes):
            notices.append(NO_REGIMEN_NOTICE)
    bad = {error.row for error in parsed.rejected}
    rows = np.array([i for i in range(parsed.n_read) if i not in bad], dtype=np.int64)
    rejected = pd.DataFrame(
        [{"input_row": e.row, "patient_id": None,
          "errors": (f"line {e.line}: " if e.line is not None else "") + "; ".join(str(x) for x in e.errors)}
         for e in parsed.rejected], columns=["input_row", "patient_id", "errors"])

    def partitions() -> Iterator[Partition]:
        for index, start in enumerate(range(0, len(parsed.records), partition_rows)):
            chunk = parsed.records[start:start + partition_rows]
            frame = pd.DataFrame([record_to_row(r) for r in chunk], columns=list(INPUT_FIELDS))
            yield Partition(index, frame, rows[start:start + len(chunk)])

    return partitions(), rejected, parsed.n_read


# -- writing ------------------------------------------------------------------------------------


def _arrow_schema(table: pd.DataFrame, metadata: dict[str, str]) -> pa.Schema:
    types = {"input_row": pa.int64(), "patient_id": pa.string(), "regimen": pa.string(),
             "regimen_class": pa.string(), "eligible": pa.bool_(), "ineligible_reason": pa.string(),
             "rank": pa.int64(), "label": pa.string(), "warnings": pa.string(), "validation": pa.string(),
             "validation_warning": pa.string(), explanation_groups.NOT_RECORDED: pa.string()}
    fields = [pa.field(c, types.get(c, pa.float64())) for c in table.columns]
    return pa.schema(fields, metadata={k: v for k, v in metadata.items() if v is not None})


class _Writer:
    """Writes output tables in order to one Parquet file (row group by row group) or one CSV file."""

    def __init__(self, path: Path, fmt: str, metadata: dict[str, str]):
        self.path, self.fmt, self.metadata = path, fmt, metadata
        self._parquet: pq.ParquetWriter | None = None
        self._csv = None
        self._schema: pa.Schema | None = None

    @property
    def started(self) -> bool:
        """True once a table (possibly empty) has been written."""
        return self._parquet is not None or self._csv is not None

    def write(self, table: pd.DataFrame | pa.Table) -> None:
        if self.fmt == "parquet":
            if self._parquet is None:
                self._schema = (table.schema.with_metadata({k: v for k, v in self.metadata.items() if v is not None})
                                if isinstance(table, pa.Table) else _arrow_schema(table, self.metadata))
                self._parquet = pq.ParquetWriter(self.path, self._schema, compression="zstd")
            if not isinstance(table, pa.Table):
                table = pa.Table.from_pandas(table, schema=self._schema, preserve_index=False)
            self._parquet.write_table(table)
        else:
            first = self._csv is None
            if first:
                self._csv = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            table.to_csv(self._csv, header=first, index=False)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()


def output_format(path: str | Path) -> str:
    """``parquet`` or ``csv`` from the output file name."""
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    raise BatchInputError(f"{path}: unknown output type; expected a .parquet or .csv file name")


def rejected_path_for(output: str | Path) -> Path:
    """Where the rejected rows of ``output`` go: ``<output>.rejected.csv``."""
    return Path(f"{output}.rejected.csv")


# -- the driver ---------------------------------------------------------------------------------


def _default_workers() -> int:
    """Workers of an own LocalCluster: the CPU count, at most 4."""
    import os

    return max(1, min(os.cpu_count() or 1, 4))


def _import_scoring() -> None:
    """Import what scoring a partition needs (LightGBM, for the compiled models' boosters)."""
    import lightgbm  # noqa: F401


class _Threads:
    """What :func:`score_file` asks of a Dask client, done by threads of this process: for a small
    input, which these score before a cluster would have started (and LightGBM releases the GIL)."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")

    def nthreads(self) -> dict[str, int]:
        return {"this process": self._threads}

    def scatter(self, value: Any, **_: Any) -> Any:
        return value

    def submit(self, function: Any, *args: Any, pure: bool = False) -> Any:
        return self._pool.submit(function, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def use_threads(patients: int | None, partition_rows: int, workers: int) -> bool:
    """Whether an own cluster for ``patients`` (None: unknown) should be threads of this process
    rather than worker processes. Threads start at once but share Python's lock (validation and
    features hold it, LightGBM does not), so two threads do the work of fewer than two workers; worker
    processes take seconds to start (importing LightGBM and scikit-learn). Hence: one worker,
    always threads; two, threads up to :data:`TWO_THREADS_UP_TO_PARTITIONS` partitions; more, threads
    only up to :data:`SMALL_INPUT_PARTITIONS` partitions per worker; unknown size, processes."""
    if patients is None:
        return False
    partitions = math.ceil(patients / partition_rows)
    if workers == 1:
        return True
    return partitions <= max(SMALL_INPUT_PARTITIONS * workers, TWO_THREADS_UP_TO_PARTITIONS if workers == 2 else 0)


def _client(scheduler: str | None, workers: int, processes: bool):
    """(client, cluster or None): a client of ``scheduler``, a client of a new LocalCluster of
    ``workers`` worker processes, or ``workers`` threads of this process (``processes=False``); the
    caller closes them."""
    if not processes and not scheduler:  # without importing Dask's distributed (≈ 0.15 s)
        return _Threads(workers), None
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    # its start-up chatter and "worker still alive … killing" at shutdown are not ours to show
    logging.getLogger("distributed").setLevel(logging.ERROR)
    # ":0": the scheduler's HTTP server (always started) on a free port, not 8787 with a warning when taken
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    return Client(cluster), cluster


def score_file(
    model: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    explain: bool = False,
    intervals: bool = False,
    scheduler: str | None = None,
    client: Any = None,
    source: str | None = None,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    n_workers: int | None = None,
    processes: bool | None = None,
    progress: bool = True,
    unrecorded_regimen: bool | None = None,
) -> BatchResult:
    """Score every patient of ``input_path`` with ``model`` on Dask; write ``output_path``; return counts.

    ``model``: a model URI / exported folder (loaded once in the client, then sent to each worker
    once) or an already loaded bundle or pyfunc. Dask: ``client`` (an existing
    ``distributed.Client``), else ``scheduler`` (``tcp://HOST:8786``), else ``n_workers`` workers
    (default: the CPU count, at most 4): a LocalCluster of worker processes, or with
    ``processes=False`` threads of this process (no cluster); by default whichever :func:`use_threads`
    expects to be sooner for the input's size. A cluster starts first, so that its workers import
    what scoring needs while this process loads the model.
    ``source``: a source config for non-canonical tables (read whole; see :func:`source_partitions`).
    ``unrecorded_regimen``: also one row per patient and regimen class under the training mix of the class
    (regimen ``unrecorded``, see :func:`score_table`); None = when a source table records no regimen at all.
    Rejected rows are written to ``<output>.rejected.csv`` when there are any (an old one is removed).
    ``intervals``: add each row's per-patient interval (optional: it scores every patient with missing
    fields ``draws`` more times, several times the cost of scoring alone).
    """
    from response_model.modeling.predict import as_bundle, load_model

    started = time.perf_counter()
    output_path = Path(output_path)
    fmt = output_format(output_path)
    notices: list[str] = []
    partitions, rejected_upfront, n_read, total = _input_partitions(input_path, source, partition_rows, notices)
    asked = unrecorded_regimen
    if unrecorded_regimen is None:
        unrecorded_regimen = NO_REGIMEN_NOTICE in notices
    elif unrecorded_regimen and NO_REGIMEN_NOTICE not in notices:
        notices.append(NO_REGIMEN_NOTICE)
    # closed in reverse order on the way out, also on errors: the writer, the bar, the client, the cluster
    with ExitStack() as cleanup:
        own_client = client is None
        warming = []
        if own_client:
            client, processes, warming = _own_client(cleanup, input_path, total, scheduler, n_workers, processes,
                                                     partition_rows)
        bundle = as_bundle(model if not isinstance(model, (str, Path)) else load_model(model))
        predictor = bundle.predictor()
        rejected_path = rejected_path_for(output_path)
        rejected_path.unlink(missing_ok=True)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        writer = _output_writer(output_path, fmt, bundle.metadata, explain)
        cleanup.callback(writer.close)
        if unrecorded_regimen:
            unrecorded_regimen = _check_prevalence(predictor, asked is True, notices)
        result = BatchResult(output=output_path, rejected_path=None, n_read=n_read, notices=notices,
                             cluster="given" if not own_client or scheduler else
                             "local processes" if processes else "local threads")
        rejected_frames = [rejected_upfront] if rejected_upfront is not None and len(rejected_upfront) else []
        bar = _progress_bar(cleanup, total) if progress else None
        threads = max(1, sum(client.nthreads().values()))
        window = 2 * threads
        predictor_future = client.scatter(predictor, broadcast=True, hash=False)
        del warming
        result.startup_seconds = time.perf_counter() - started
        collect = partial(_collect, writer=writer, result=result, rejected_frames=rejected_frames, bar=bar)
        _submit_partitions(client, partitions, predictor_future, window, explain=explain, parquet=fmt == "parquet",
                           count_read=not source, result=result, collect=collect, unrecorded=unrecorded_regimen,
                           intervals=intervals)
        if not writer.started:  # no valid row at all: still a file with the output's columns
            writer.write(_empty_output(predictor, explain, intervals))
    if rejected_frames:
        rejected = _write_rejected(rejected_frames, rejected_path, None if source else input_format(input_path))
        result.rejected_path = rejected_path
        result.n_rejected = len(rejected)
        result.rejected_preview = [f"row {r.input_row}: {r.errors}" for r in rejected.head(10).itertuples()]
    result.seconds = time.perf_counter() - started
    log.info("scored %d patients (%d rejected) into %d rows in %.1f s (%.0f patient-regimen scores/s)",
             result.n_scored, result.n_rejected, result.n_rows, result.seconds, result.scores_per_second)
    return result


def _input_partitions(input_path: str | Path, source: str | None, partition_rows: int, notices: list[str],
                      ) -> tuple[Iterator[Partition], pd.DataFrame | None, int, int | None]:
    """Return (partitions, rows rejected up front or None, rows read so far, total rows or None)."""
    if source:
        partitions, rejected_upfront, n_read = source_partitions(source, input_path, partition_rows, notices)
        return partitions, rejected_upfront, n_read, n_read
    return read_partitions(input_path, partition_rows, arrow=True), None, 0, count_rows(input_path)


def _own_client(cleanup: ExitStack, input_path: str | Path, total: int | None, scheduler: str | None,
                n_workers: int | None, processes: bool | None, partition_rows: int) -> tuple[Any, bool, list]:
    """Return (client, processes, warming futures) of a client of our own, closed by ``cleanup``."""
    workers = n_workers or _default_workers()
    if processes is None:  # a small input is scored sooner than worker processes start
        size = total if total is not None else rows_at_most(input_path)
        processes = scheduler is not None or not use_threads(size, partition_rows, workers)
    client, cluster = _client(scheduler, workers, processes)
    if cluster is not None:
        cleanup.callback(cluster.close)
    cleanup.callback(client.close)
    warming = []
    if processes and not scheduler:
        # the new worker processes import what scoring needs while this process loads the model
        warming = [client.submit(_import_scoring, workers=[address], pure=False)
                   for address in client.scheduler_info()["workers"]]
    return client, processes, warming


def _output_writer(output_path: Path, fmt: str, meta: Mapping[str, Any], explain: bool) -> _Writer:
    """Return the writer of ``output_path``, its metadata naming the model (and the SHAP scale)."""
    return _Writer(output_path, fmt, {
        "response_model.model_name": meta.get("model_name"),
        "response_model.model_version": meta.get("model_version"),
        "response_model.model_uri": meta.get("model_uri"), "response_model.label": meta.get("label"),
        "response_model.shap_scale": "the models' own explain() values, log-odds scale, as in the audit trail"
        if explain else None,
    })


def _progress_bar(cleanup: ExitStack, total: int | None) -> Any:
    """Return a tqdm bar of scored patients, closed by ``cleanup``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="scoring", unit="patient", smoothing=0.1)
    cleanup.callback(bar.close)
    return bar


def _submit_partitions(client: Any, partitions: Iterator[Partition], predictor_future: Any, window: int, *,
                       explain: bool, parquet: bool, count_read: bool, result: BatchResult,
                       collect: Callable[[tuple[int, Any]], None], unrecorded: bool = False,
                       intervals: bool = False) -> None:
    """Submit every partition, at most ``window`` in flight, ``collect``-ing each in input order; return None."""
    pending: deque = deque()
    for part in partitions:
        if count_read:
            result.n_read += len(part.frame)
        future = client.submit(_score_task, predictor_future, part.frame, part.input_rows, explain, parquet,
                               unrecorded, intervals, pure=False)
        pending.append((len(part.frame), future))
        while len(pending) >= window:
            collect(pending.popleft())
    while pending:
        collect(pending.popleft())


def _collect(item: tuple[int, Any], *, writer: _Writer, result: BatchResult, rejected_frames: list[pd.DataFrame],
             bar: Any) -> None:
    """Write one finished partition (rows in, future) and add it to ``result``'s counts; return None."""
    rows_in, future = item
    table, rejected = future.result()
    writer.write(table)
    result.n_rows += len(table)
    result.n_scored += rows_in - len(rejected)
    result.partitions += 1
    if len(rejected):
        rejected_frames.append(rejected)
        result.n_rejected += len(rejected)
    if bar is not None:
        bar.update(rows_in)
    log.debug("partition %d: %d patients, %d rejected", result.partitions, rows_in, len(rejected))
    del future


def _write_rejected(frames: list[pd.DataFrame], path: Path, fmt: str | None) -> pd.DataFrame:
    """Return all rejected rows in input order, written to ``path`` as CSV; for an input file of format
    ``fmt`` with the ``line`` ``validate`` names each by (see the module docstring)."""
    rejected = pd.concat(frames, ignore_index=True).sort_values("input_row", kind="stable")
    if fmt is not None:
        rejected.insert(1, "line", rejected["input_row"] + (2 if fmt == "csv" else 1))
    rejected.to_csv(path, index=False)
    return rejected


def _check_prevalence(predictor: Predictor, asked: bool, notices: list[str]) -> bool:
    """True when every class of ``predictor`` has training regimen counts; else BatchInputError naming what
    is missing when the unrecorded rows were asked for, or a notice that they are left out."""
    from response_model.modeling.unknown_regimen import mixture_weights

    try:
        for regimen_class in predictor.regimen_classes:
            mixture_weights(predictor.metadata, regimen_class)
    except ValueError as error:
        if asked:
            raise BatchInputError(f"--unrecorded-regimen: {error}") from None
        notices.append(f"no 'unrecorded' rows: {error}")
        return False
    return True


def _empty_output(predictor: Predictor, explain: bool, intervals: bool = False) -> pd.DataFrame:
    table, _ = score_partition(predictor, pd.DataFrame(columns=["age", "sex"]), np.array([], np.int64), explain,
                               intervals=intervals)
    return table
