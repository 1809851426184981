"""The models' own numbers, for tests that compare against them: the bundle's
:meth:`~response_model.modeling.predictor.Predictor.reference` predictor (each model's own
``predict_proba`` / ``explain`` on DataFrames), in the shapes the tests read."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from response_model.modeling.predict import as_bundle
from response_model.modeling.predictor import Predictor
from response_model.schema import PatientRecord


def scores(model, records: Sequence[PatientRecord] | PatientRecord,
           regimens: Sequence[str] | None = None) -> pd.DataFrame:
    """The table of :meth:`Predictions.table` from the models' own ``predict_proba``; ``regimens``:
    the same names for every record (None: every candidate)."""
    records = [records] if isinstance(records, PatientRecord) else list(records)
    wanted = None if regimens is None else [list(regimens)] * len(records)
    return Predictor.reference(as_bundle(model)).predict(records, wanted).table()


def explain(model, records: Sequence[PatientRecord] | PatientRecord, regimen: str,
            ) -> dict[str, tuple[pd.DataFrame, float]]:
    """{outcome: (contributions, base value)} of the models' own ``explain`` for ``records`` under
    ``regimen``: one row per record, one column per feature the model explains."""
    records = [records] if isinstance(records, PatientRecord) else list(records)
    predictions = Predictor.reference(as_bundle(model)).predict(records, [[regimen]] * len(records), explain=True)
    return {outcome: (pd.DataFrame(e.values, columns=e.names), e.base_value)
            for (_, outcome), e in predictions.explanations.items()}
