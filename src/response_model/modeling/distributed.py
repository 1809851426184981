"""Training on a Dask cluster: ``response-model train … --dask-scheduler tcp://HOST:8786``.

Inside :func:`dask_training`:

* **cross-validation folds** are Dask tasks: :func:`~response_model.modeling.cv.cross_validate`'s
  joblib ``Parallel`` runs on joblib's ``dask`` backend with every worker thread (``n_jobs=-1``);
  one task per (repeat, fold), the nested search of that fold inside it;
* **search trials** of the final model (every candidate × inner fold of the search on all rows)
  are Dask tasks the same way (scikit-learn's search with ``n_jobs=-1``);
* **LightGBM** fits on at least ``lightgbm_dask_min_rows`` rows (``dask: {lightgbm_dask_min_rows:
  …}`` in ``configs/train/*.yaml``) are data-parallel over the workers with
  ``lightgbm.dask.DaskLGBMClassifier``; the fitted model comes back as a plain ``LGBMClassifier``
  (``to_local()``), so the bundle holds the same kind of object as after a local run.

The client process does all the MLflow tracking (runs, metrics, tables, plots, the bundle); the
workers only compute, and need the same ``response_model`` package installed.

Same seeds ⇒ same folds ⇒ the same single-threaded, seeded fits in the workers as in a local run, so
the metrics equal the local run's (tested to 1e-9; in practice bit for bit). Data-parallel
LightGBM (above the row threshold only) builds its histograms per worker and is not bit-identical
to a single-machine fit: equivalent in quality, not in the last digit.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_LIGHTGBM_DASK_MIN_ROWS = 200_000


@dataclass(frozen=True)
class DaskTraining:
    """The active Dask context of a training run: the client and the LightGBM row threshold (None = never)."""

    client: Any
    lightgbm_min_rows: int | None

    @property
    def address(self) -> str:
        """The scheduler's address."""
        return str(self.client.scheduler.address)


_ACTIVE: ContextVar[DaskTraining | None] = ContextVar("response_model_dask_training", default=None)


def active() -> DaskTraining | None:
    """The Dask context of the running training (in the client process), or None for a local run."""
    return _ACTIVE.get()


@contextlib.contextmanager
def dask_training(scheduler: Any, lightgbm_min_rows: int | None = DEFAULT_LIGHTGBM_DASK_MIN_ROWS,
                  ) -> Iterator[DaskTraining]:
    """Run the enclosed training on the Dask cluster at ``scheduler`` (an address or a ``distributed.Client``).

    joblib's default backend becomes ``dask`` on that client (folds and search trials as Dask
    tasks) and LightGBM fits of at least ``lightgbm_min_rows`` rows use ``lightgbm.dask``. A client
    created here is closed on exit; the cluster itself is left running.
    """
    from distributed import Client
    from joblib import parallel_config

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    context = DaskTraining(client, None if lightgbm_min_rows is None else int(lightgbm_min_rows))
    token = _ACTIVE.set(context)
    try:
        workers = client.nthreads()
        log.info("training on the Dask cluster at %s: %d worker(s), %d thread(s)", context.address, len(workers),
                 sum(workers.values()))
        with parallel_config(backend="dask", client=client):
            yield context
    finally:
        _ACTIVE.reset(token)
        if own:
            client.close()


def parallel_jobs(local: int) -> int:
    """``n_jobs`` for joblib / scikit-learn: every Dask worker thread (-1) inside :func:`dask_training`,
    else ``local``."""
    return -1 if active() is not None else local


def fit_lightgbm(model: Any, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None,
                 init_score: np.ndarray | None = None) -> Any:
    """Fit the unfitted ``lightgbm.LGBMClassifier`` ``model`` on (X, y) and return the fitted classifier.

    Inside :func:`dask_training`, with at least the configured number of rows, the fit is
    data-parallel on the cluster (``lightgbm.dask.DaskLGBMClassifier`` with the same parameters, one
    partition per worker) and the result is its ``to_local()`` ``LGBMClassifier``; otherwise it is
    ``model.fit(X, y, sample_weight=sample_weight)`` in this process. ``init_score`` (a fixed per-row
    log-odds offset) is passed to LightGBM; such fits stay in this process.
    """
    context = active()
    if (context is None or context.lightgbm_min_rows is None or len(X) < context.lightgbm_min_rows
            or init_score is not None):
        return model.fit(X, y, sample_weight=sample_weight, init_score=init_score)
    import dask.dataframe as dd
    from lightgbm import DaskLGBMClassifier

    partitions = max(1, len(context.client.nthreads()))
    frame = X.reset_index(drop=True)
    target = pd.Series(np.asarray(y), name="y")
    log.info("fitting LightGBM on %d rows with lightgbm.dask over %d worker(s)", len(frame), partitions)
    params = {k: v for k, v in model.get_params().items() if k != "n_jobs"}
    distributed = DaskLGBMClassifier(client=context.client, **params)  # threads: each worker's own
    with warnings.catch_warnings():
        # the scikit-learn wrapper always passes n_jobs; lightgbm.dask replaces it by each worker's threads
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        weight = None if sample_weight is None else dd.from_pandas(
            pd.Series(np.asarray(sample_weight, dtype=float), name="w"), npartitions=partitions, sort=True)
        distributed.fit(dd.from_pandas(frame, npartitions=partitions, sort=True),
                        dd.from_pandas(target, npartitions=partitions, sort=True), sample_weight=weight)
    return distributed.to_local()
