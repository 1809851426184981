"""Fast, exact evaluation of a bundle's fitted models on NumPy feature rows: the bundle's evaluators.

A prediction request scores a dozen rows; for so few rows the fitted models' own ``predict_proba``
and ``explain`` spend almost all their time in pandas and scikit-learn input validation, not in
arithmetic. :func:`compile_model` turns a fitted
:class:`~response_model.modeling.estimators.ResponseClassifier` into a :class:`CompiledModel` that
performs the same floating-point operations (up to the order of additions) on a NumPy matrix whose
columns are the bundle's feature names, or on the :class:`~response_model.features.FeatureBlocks` of
its rows (each patient's features once, never the whole matrix):

* logistic part — the same clipping, median imputation with missing indicators (the fitted
  ``SimpleImputer``'s ``statistics_`` and ``indicator_.features_``), standardisation (the fitted
  ``StandardScaler``'s ``mean_`` and ``scale_``), then the fitted learner's coefficients and
  intercept; the patient columns' terms once per patient, the regimen columns' once per regimen;
* LightGBM part — the fitted booster's own trees (``Booster.predict``, one thread: a call scores
  too few rows to gain from more), regrouped by :func:`group_trees` into a few Boosters of their
  own: the trees that split on no regimen feature, and the trees that split on one same set of
  regimen features. A patient is scored under a dozen regimens and most trees never look at the
  regimen, so each group is evaluated once per patient and distinct value of its regimen features,
  and its output is shared by the patient's rows. The groups' raw scores (and TreeSHAP values, being
  per tree) add up to the booster's, up to the order of the floating-point additions;
* the fixed offset (a published linear score, ``ResponseClassifier(offset=...)``) — its clipping,
  median filling and scaled coefficients, per row;
* the weighting, the optional recalibration and the whole-model additive explanation as in
  ``ResponseClassifier.predict_proba`` and ``ResponseClassifier.explain``.

Nothing is trusted on faith: each compiled model is checked against the model's own
``predict_proba`` and ``explain`` on probe rows (missing values, clipped values, zeros, extremes)
when it is built — when the bundle is built, before it is logged — and any model that is not a
ResponseClassifier of the expected shape, or that disagrees by more than :data:`TOLERANCE`, is
evaluated by :class:`ReferenceModel`, which calls the model's own methods. Both have the interface
of :class:`~response_model.modeling.predictor.Evaluator`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from response_model.features import FeatureBlocks

log = logging.getLogger(__name__)

#: Largest absolute difference from the model's own methods accepted at the self-check.
TOLERANCE = 1e-12


class ReferenceModel:
    """The model's own ``predict_proba`` / ``explain`` behind the compiled interface (always exact)."""

    exact_copy = False

    def __init__(self, model: Any, feature_names: Sequence[str]) -> None:
        self.model = model
        self.feature_names = list(feature_names)
        names = getattr(model, "feature_names_in_", None)
        self.columns = list(self.feature_names) if names is None else [str(n) for n in names]
        self.explains = callable(getattr(model, "explain", None))

    def _frame(self, X: np.ndarray | FeatureBlocks) -> pd.DataFrame:
        if isinstance(X, FeatureBlocks):
            X = X.matrix()
        return pd.DataFrame(X, columns=self.feature_names).reindex(columns=self.columns)

    def probabilities(self, X: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Probability of the outcome per row of ``X`` (columns: the bundle's feature names; ``groups``
        is accepted for :class:`CompiledModel`'s interface and not needed)."""
        if len(X) == 0:
            return np.empty(0)
        return np.asarray(self.model.predict_proba(self._frame(X)), dtype=np.float64)[:, 1]

    def explain(self, X: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, list[str], float]:
        """(contributions, their column names, base value) of the model's own ``explain``."""
        frame, base = self.model.explain(self._frame(X))
        return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns], float(base)


def _distinct_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct row of ``values``, distinct row of each row), rows compared by their
    bytes (hashing them: ``np.unique(axis=0)`` sorts, ten times slower)."""
    contiguous = np.ascontiguousarray(values)
    keys = contiguous.view(np.dtype((np.void, contiguous.dtype.itemsize * contiguous.shape[1]))).ravel()
    codes, distinct = pd.factorize(keys)
    return _first_and_inverse(codes, len(distinct))


def _tree_features(block: str) -> set[int]:
    """Positions of the features one tree of a LightGBM model text splits on (none for a one-leaf tree)."""
    found = re.search(r"^split_feature=(.*)$", block, flags=re.MULTILINE)
    return {int(v) for v in found.group(1).split()} if found else set()


@dataclass(frozen=True)
class TreeGroup:
    """Some trees of a booster, as a LightGBM Booster of their own over only the features they split on.

    ``features``: positions, among the original booster's features, of this booster's features (in
    its order); ``row_features``: those of them that are row features.
    """

    booster: Any
    features: np.ndarray
    row_features: np.ndarray


def group_trees(booster: Any, row_features: Collection[str], max_groups: int = 8) -> list[TreeGroup]:
    """Partition ``booster``'s trees into at most ``max_groups`` :class:`TreeGroup`: the trees that split
    on no row feature; then the trees that split on one same set of row features, for the largest
    such sets; the remaining trees together. The groups' raw scores and ``pred_contrib`` values (put
    back in the original feature positions) add up to ``booster``'s, up to the order of additions.
    Raises ValueError for a model this cannot split (several trees per iteration, linear trees)."""
    import lightgbm

    text = booster.model_to_string()
    if booster.num_model_per_iteration() != 1 or "is_linear=1" in text:
        raise ValueError("only single-output models of constant-leaf trees are split")
    start, end = text.index("\nTree=0\n") + 1, text.index("end of trees")
    header, tail = text[:start].split("\n"), text[end:]
    blocks = [block for block in text[start:end].split("\n\n\n") if block.strip()]
    if len(blocks) != booster.num_trees():
        raise ValueError(f"read {len(blocks)} trees of {booster.num_trees()}")
    row = {k for k, name in enumerate(booster.feature_name()) if name in set(row_features)}
    used = [_tree_features(block) for block in blocks]
    by_set: dict[frozenset[int], list[int]] = {}
    for k, features in enumerate(used):
        by_set.setdefault(frozenset(features & row), []).append(k)
    patient = by_set.pop(frozenset(), [])
    ranked = sorted(by_set.values(), key=len, reverse=True)
    kept = ranked[: max_groups - 2] + ([sorted(k for rest in ranked[max_groups - 2:] for k in rest)]
                                       if len(ranked) > max_groups - 2 else [])

    def compact(trees: list[int]) -> TreeGroup:
        # without ``tree_sizes`` LightGBM reads the trees one after the other
        features = sorted(set().union(*(used[k] for k in trees))) or [0]
        position = {old: new for new, old in enumerate(features)}
        lines = []
        for line in header:
            key, _, value = line.partition("=")
            if key in ("feature_names", "feature_infos", "monotone_constraints"):
                values = value.split(" ")
                line = f"{key}={' '.join(values[k] for k in features)}"
            elif key == "max_feature_idx":
                line = f"max_feature_idx={len(features) - 1}"
            elif key == "tree_sizes":
                continue
            lines.append(line)
        body = "".join(
            re.sub(r"^split_feature=(.*)$",
                   lambda m: "split_feature=" + " ".join(str(position[int(v)]) for v in m.group(1).split()),
                   re.sub(r"^Tree=\d+", f"Tree={n}", blocks[k], count=1), flags=re.MULTILINE) + "\n\n\n"
            for n, k in enumerate(trees))
        return TreeGroup(lightgbm.Booster(model_str="\n".join(lines) + body + tail),
                         np.array(features, dtype=np.intp), np.array([f for f in features if f in row], dtype=np.intp))

    return [compact(trees) for trees in ([patient] if patient else []) + kept]


def _first_and_inverse(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first position of each distinct key, in order of the keys' values; each position's index into
    that), for integer ``keys`` in [0, size) — without sorting."""
    first = np.full(size, -1, dtype=np.intp)
    first[keys[::-1]] = np.arange(len(keys) - 1, -1, -1)  # the last write of each key is its first position
    present = first >= 0
    return first[present], (np.cumsum(present) - 1)[keys]


@dataclass(frozen=True)
class _Rows:
    """The rows to evaluate and where they repeat: ``take(rows, columns)`` gives their values; one row
    per patient (``first_patient``) and each row's patient; one row per distinct pattern of row
    features (``first_pattern``) and each row's pattern."""

    n: int
    take: Any
    first_patient: np.ndarray
    patient_of_row: np.ndarray
    first_pattern: np.ndarray
    pattern_of_row: np.ndarray


def _checked_imputer(impute: Any) -> np.ndarray:
    """The median imputer's statistics; ValueError when it is of another kind than compiled here."""
    statistics = np.asarray(impute.statistics_, dtype=np.float64)
    if np.isnan(statistics).any() or getattr(impute, "strategy", None) != "median":
        raise ValueError("imputer with empty features or another strategy")
    if not (getattr(impute, "missing_values", None) is np.nan or
            (isinstance(impute.missing_values, float) and math.isnan(impute.missing_values))):
        raise ValueError("imputer missing_values is not NaN")
    return statistics


def _linear_part(linear: Any, position: dict[str, int], column_position: dict[str, int],
                 row_columns: np.ndarray) -> dict[str, Any]:
    """The fitted logistic pipeline's parameters, as :class:`CompiledModel` applies them."""
    if list(linear.pipeline_.named_steps) != ["impute", "scale", "lr"]:
        raise ValueError("unexpected logistic pipeline steps")
    steps = linear.pipeline_.named_steps
    impute, scale, learner = steps["impute"], steps["scale"], steps["lr"]
    statistics = _checked_imputer(impute)
    columns = [str(c) for c in linear.columns_]
    clips = []
    for name, bound in (linear.clip or {}).items():
        if name in columns:
            low, high = (None, bound) if np.isscalar(bound) else tuple(bound)
            clips.append((columns.index(name), low, high))
    indicator = None if impute.indicator_ is None else np.asarray(impute.indicator_.features_, dtype=np.intp)
    # which of the linear columns, and which standardised columns (the columns, then their missing
    # indicators), come from row features
    from_rows = np.isin([position[c] for c in columns], row_columns)
    return {
        "index": np.array([position[c] for c in columns], dtype=np.intp),
        "clips": clips,
        "statistics": statistics,
        "indicator": indicator,
        "mean": None if scale.mean_ is None or not scale.with_mean else np.asarray(scale.mean_),
        "scale": None if scale.scale_ is None or not scale.with_std else np.asarray(scale.scale_),
        "coef": np.asarray(learner.coef_[0], dtype=np.float64),
        "intercept": float(learner.intercept_[0]),
        "n": len(columns),
        "positions": np.array([column_position[c] for c in columns], dtype=np.intp),
        "row_columns": from_rows,
        "row_terms": from_rows if indicator is None else np.concatenate([from_rows, from_rows[indicator]]),
    }


class CompiledModel:
    """A fitted ResponseClassifier evaluated with NumPy (see the module docstring).

    ``row_features``: the features that differ between the rows of one patient (the regimen's); the
    others are the patient's, the same in every row of a group passed as ``groups``.
    """

    exact_copy = True
    explains = True

    def __init__(self, model: Any, feature_names: Sequence[str], row_features: Collection[str] = ()) -> None:
        self.row_columns = np.array([k for k, name in enumerate(feature_names) if name in set(row_features)],
                                    dtype=np.intp)
        self.n_features = len(feature_names)
        position = {name: i for i, name in enumerate(feature_names)}
        names_in = [str(n) for n in model.feature_names_in_]
        missing = [n for n in names_in if n not in position]
        if missing:
            raise ValueError(f"model inputs absent from the bundle's features: {', '.join(missing)}")
        self.w = float(model.linear_weight)
        self.calibrator = None if model.calibrator_ is None else tuple(float(v) for v in model.calibrator_)
        self.columns = [str(c) for c in model.explained_features_]
        column_position = {name: k for k, name in enumerate(self.columns)}
        self.linear = None if model.linear_ is None else _linear_part(
            model.linear_, position, column_position, self.row_columns)
        self.gbm = None
        if model.gbm_ is not None:
            gbm_columns = [str(c) for c in model.gbm_features_]
            self.gbm = {
                "index": np.array([position[c] for c in gbm_columns], dtype=np.intp),
                "groups": group_trees(model.gbm_.booster_, row_features),
                "positions": np.array([column_position[c] for c in gbm_columns], dtype=np.intp),
            }
        self.offset = None
        if getattr(model, "offset_", None) is not None:
            arrays = model.offset_.as_arrays()
            self.offset = {**arrays, "index": np.array([position[c] for c in arrays["columns"]], dtype=np.intp),
                           "positions": np.array([column_position[c] for c in arrays["columns"]], dtype=np.intp)}
        if self.linear is None and self.gbm is None:
            raise ValueError("a model with neither part")

    # -- the offset ---------------------------------------------------------------------------------

    def _offset_inputs(self, layout: _Rows) -> np.ndarray:
        """The offset's inputs of every row: clipped, then missing ones filled (as ``LinearScore`` does)."""
        off = self.offset
        values = layout.take(np.arange(layout.n), off["index"])
        values = np.where(values > off["upper"], off["upper"], values)
        return np.where(np.isnan(values), off["fill"], values)

    def _offset_log_odds(self, layout: _Rows) -> np.ndarray:
        off = self.offset
        return off["shift"] + off["scale"] * (off["intercept"] + self._offset_inputs(layout) @ off["coef"])

    def _offset_terms(self, layout: _Rows) -> np.ndarray:
        """The offset's additive terms ``scale · (input − centre) · coef`` of every row."""
        off = self.offset
        return off["scale"] * (self._offset_inputs(layout) - off["centre"]) * off["coef"]

    # -- the logistic part ------------------------------------------------------------------------

    def _standardised(self, rows: _Rows, which: np.ndarray) -> np.ndarray:
        """The standardised logistic-part inputs of the rows ``which``."""
        lin = self.linear
        values = rows.take(which, lin["index"])
        for j, low, high in lin["clips"]:  # pandas Series.clip: NaN stays NaN
            column = values[:, j]
            if low is not None:
                column = np.where(column < low, low, column)
            if high is not None:
                column = np.where(column > high, high, column)
            values[:, j] = column
        missing = np.isnan(values)
        values = np.where(missing, lin["statistics"], values)
        if lin["indicator"] is not None:
            values = np.hstack([values, missing[:, lin["indicator"]].astype(np.float64)])
        if lin["mean"] is not None:
            values -= lin["mean"]
        if lin["scale"] is not None:
            values /= lin["scale"]
        return values

    def _decision(self, layout: _Rows) -> np.ndarray:
        """The logistic part's decision function: the patient columns' terms once per patient, the
        row columns' terms once per pattern of row features, added (the learner's own
        ``decision_function`` of every row, up to the order of the additions)."""
        lin = self.linear
        row = lin["row_terms"]
        # row by row sums (not a matrix product, whose rounding can depend on how many rows there
        # are): a patient's numbers do not depend on which patients share its partition
        z_patient = self._standardised(layout, layout.first_patient)
        decision = (z_patient[:, ~row] * lin["coef"][~row]).sum(axis=1)[layout.patient_of_row]
        if row.any():
            z_pattern = self._standardised(layout, layout.first_pattern)
            decision = decision + (z_pattern[:, row] * lin["coef"][row]).sum(axis=1)[layout.pattern_of_row]
        return decision + lin["intercept"]

    def _terms(self, layout: _Rows) -> np.ndarray:
        """:meth:`_linear_terms` of every row, computed as :meth:`_decision` is."""
        terms = self._linear_terms(self._standardised(layout, layout.first_patient))[layout.patient_of_row]
        row = self.linear["row_columns"]
        if row.any():
            pattern_terms = self._linear_terms(self._standardised(layout, layout.first_pattern))
            terms[:, row] = pattern_terms[layout.pattern_of_row][:, row]
        return terms

    def _linear_terms(self, z: np.ndarray) -> np.ndarray:
        lin = self.linear
        terms = z * lin["coef"]
        n = lin["n"]
        values = terms[:, :n].copy()
        if lin["indicator"] is not None:
            for k, j in enumerate(lin["indicator"]):
                values[:, j] += terms[:, n + k]
        return values

    # -- the LightGBM part ----------------------------------------------------------------------------

    def _gbm(self, layout: _Rows, **kwargs: Any) -> np.ndarray:
        """The booster's output, ``predict(**kwargs)``, as the sum of its tree groups' (:func:`group_trees`),
        each evaluated once per patient and distinct value of the row features its trees split on."""
        index = self.gbm["index"]
        contributions = kwargs.get("pred_contrib", False)
        out = np.zeros((layout.n, len(index) + 1)) if contributions else np.zeros(layout.n)
        n_patients = len(layout.first_patient)
        for group in self.gbm["groups"]:
            if len(group.row_features):
                # the distinct values of this group's row features among the distinct row patterns
                _, value_of_pattern = _distinct_rows(layout.take(layout.first_pattern, index[group.row_features]))
                n_values = int(value_of_pattern.max()) + 1 if len(value_of_pattern) else 1
                first, inverse = _first_and_inverse(
                    layout.patient_of_row * n_values + value_of_pattern[layout.pattern_of_row], n_patients * n_values)
            else:
                first, inverse = layout.first_patient, layout.patient_of_row
            values = group.booster.predict(layout.take(first, index[group.features]), num_threads=1, **kwargs)
            if contributions:
                out[:, group.features] += values[inverse, :-1]
                out[:, -1] += values[inverse, -1]
            else:
                out += values[inverse]
        return out

    def _rows(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None) -> _Rows:
        if isinstance(X, FeatureBlocks):  # the patients and regimens are known: nothing to find out
            first_patient, patient_of_row = _first_and_inverse(X.patient_index, len(X.patient))
            patterns = (np.zeros(len(X), np.intp), 1) if X.regimen is None else (X.regimen_index, len(X.regimen))
            return _Rows(len(X), X.take, first_patient, patient_of_row, *_first_and_inverse(*patterns))
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        _, first_patient, patient_of_row = np.unique(groups, return_index=True, return_inverse=True)
        if len(self.row_columns):
            first_pattern, pattern_of_row = _distinct_rows(X[:, self.row_columns])
        else:
            first_pattern, pattern_of_row = _first_and_inverse(np.zeros(len(X), np.intp), 1)
        return _Rows(len(X), lambda rows, columns: X[np.ix_(rows, columns)], first_patient, patient_of_row.ravel(),
                     first_pattern, pattern_of_row)

    # -- the interface --------------------------------------------------------------------------------

    def log_odds(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None = None) -> np.ndarray:
        """The whole model's log-odds before calibration, per row (``groups``: see :meth:`probabilities`)."""
        f = np.zeros(len(X))
        layout = self._rows(X, groups)
        if self.offset is not None:
            f += self._offset_log_odds(layout)
        if self.linear is not None:
            f += self.w * self._decision(layout)
        if self.gbm is not None:
            f += (1.0 - self.w) * self._gbm(layout, raw_score=True)
        return f

    def probabilities(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None = None) -> np.ndarray:
        """Probability of the outcome per row of ``X``: a matrix whose columns are the bundle's feature
        names, or the :class:`~response_model.features.FeatureBlocks` of its rows (when the bundle's
        features are :func:`~response_model.features.feature_names`, in that order).

        ``groups`` (optional, one integer per row of a matrix): rows with the same value have the same
        patient features (they differ only in :attr:`row_columns`); the answer is the same with or
        without it, and blocks say it themselves.
        """
        if len(X) == 0:
            return np.empty(0)
        return self.probability_of(self.log_odds(X, groups))

    def probability_of(self, log_odds: np.ndarray) -> np.ndarray:
        """Probability of the outcome for whole-model log-odds before calibration (e.g. an explanation's
        base value + the sum of its contributions)."""
        if self.calibrator is not None:
            a, b = self.calibrator
            log_odds = a + b * log_odds
        return expit(log_odds)

    def explain(self, X: np.ndarray | FeatureBlocks, groups: np.ndarray | None = None,
                ) -> tuple[np.ndarray, list[str], float]:
        """(contributions, column names, base value): the whole model's additive log-odds terms
        (``X``, ``groups``: see :meth:`probabilities`)."""
        total = np.zeros((len(X), len(self.columns)))
        base = 0.0
        layout = self._rows(X, groups)
        if self.offset is not None:
            total[:, self.offset["positions"]] += self._offset_terms(layout)
            base += self.offset["base"]
        if self.linear is not None:
            total[:, self.linear["positions"]] += self.w * self._terms(layout)
            base += self.w * self.linear["intercept"]
        if self.gbm is not None:
            # the expected raw score is the same for every row; with no rows, read it off an all-missing one
            raw = self._gbm(layout, pred_contrib=True) if len(X) else \
                self._gbm(self._rows(np.full((1, self.n_features), np.nan), None), pred_contrib=True)
            total[:, self.gbm["positions"]] += (1.0 - self.w) * raw[: len(X), :-1]
            base += (1.0 - self.w) * float(raw[0, -1])
        return total, list(self.columns), base


def probe_rows(n_features: int, seed: int = 0) -> np.ndarray:
    """Rows exercising missing values, zeros, ones, extremes and ordinary values (for the self-check)."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(6, n_features)) * rng.choice([1.0, 3.0, 30.0], size=(6, n_features))
    normal[rng.random(normal.shape) < 0.3] = np.nan
    counts = rng.integers(0, 4, size=(3, n_features)).astype(np.float64)
    return np.vstack([
        np.full((1, n_features), np.nan), np.zeros((1, n_features)), np.ones((1, n_features)),
        np.full((1, n_features), 1e4), np.full((1, n_features), -1e4), normal, counts,
    ])


def grouped_probe_rows(X: np.ndarray, row_columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, groups): each row of ``X`` three times, with the ``row_columns`` of itself and of two
    other rows, as one group (a patient under several regimens)."""
    n = len(X)
    rows = np.repeat(X, 3, axis=0)
    for shift in (1, 2):
        rows[shift::3][:, row_columns] = np.roll(X, shift, axis=0)[:, row_columns]
    return rows, np.repeat(np.arange(n), 3)


def _agrees(compiled: CompiledModel, reference: ReferenceModel, X: np.ndarray,
            groups: np.ndarray | None = None) -> str | None:
    """None when ``compiled`` (given ``groups``) reproduces ``reference`` on ``X``, else what differs."""
    p, p_ref = compiled.probabilities(X, groups), reference.probabilities(X)
    if p.shape != p_ref.shape or not np.allclose(p, p_ref, rtol=0.0, atol=TOLERANCE, equal_nan=True):
        return "probabilities differ"
    if reference.explains:
        values, columns, base = compiled.explain(X, groups)
        ref_values, ref_columns, ref_base = reference.explain(X)
        if columns != ref_columns:
            return "explanation columns differ"
        if not np.allclose(values, ref_values, rtol=0.0, atol=TOLERANCE, equal_nan=True):
            return "contributions differ"
        if not math.isclose(base, ref_base, rel_tol=0.0, abs_tol=TOLERANCE):
            return "base values differ"
    return None


def compile_model(model: Any, feature_names: Sequence[str],
                  row_features: Collection[str] = ()) -> CompiledModel | ReferenceModel:
    """A :class:`CompiledModel` of ``model`` if it reproduces the model's own methods on probe rows
    (one row per patient, and patients' rows grouped), else a :class:`ReferenceModel` (which calls
    them). Never changes an answer, only its cost. ``row_features``: see :class:`CompiledModel`."""
    reference = ReferenceModel(model, feature_names)
    if not all(hasattr(model, a) for a in ("linear_", "gbm_", "linear_weight", "calibrator_",
                                             "explained_features_", "feature_names_in_")):
        return reference
    try:
        compiled = CompiledModel(model, feature_names, row_features)
        # the probe rows each on its own, then grouped as a patient's rows are: one check
        probes = probe_rows(len(feature_names))
        grouped, groups = grouped_probe_rows(probes, compiled.row_columns)
        problem = _agrees(compiled, reference, np.vstack([probes, grouped]),
                          np.concatenate([np.arange(len(probes)), len(probes) + groups]))
    except Exception as error:  # noqa: BLE001 - any surprise: the model's own methods serve
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        log.warning("serving %s through its own predict_proba/explain (slower): the compiled form %s",
                    type(model).__name__, problem)
        return reference
    return compiled
