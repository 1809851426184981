"""Per-patient uncertainty intervals: how much this patient's estimate could move, at a stated level.

Two sources of uncertainty are combined on the log-odds scale, per patient × regimen × outcome:

* **model uncertainty** — the spread (variance of the log-odds) of a small bootstrap ensemble: the
  final model refitted, with the same parameters, on ``members`` bootstrap resamples of the training
  rows of its class (:func:`fit_members`, at training time);
* **the missing fields' spread** — for a record with missing optional fields (or never sequenced),
  ``draws`` records with those fields filled in from the training population's distribution
  (:class:`FieldDistribution`: per-field 1st–99th percentiles, category frequencies and pathway
  frequencies among sequenced patients — aggregates only, never a training patient's row), drawn by
  Latin-hypercube sampling from a fixed seed (the same record always gets the same interval), each
  field independently, and scored through the same feature path, draw ``j`` by ensemble member
  ``j mod members`` — so that the draws' spread holds the model's as well. The interval of such a
  record is centred on the mean of the draws' log-odds and widened by their variance; that of a record
  with nothing to draw is centred on its estimate and widened by the ensemble's variance.

Each standard deviation is multiplied by a factor estimated at training time on training rows only
(:func:`estimate_scale`): where the training cohort carries the simulator's true probabilities, the
factors that make the intervals cover the rows' true probabilities at the nominal level — on the rows
as recorded, around their out-of-fold estimates, and on the same rows with each optional field hidden
with probability 0.5, around their draws. Without truth (real cohorts) both factors are 1 (the
method says so): the interval then covers estimation variance and the missing fields' spread only.

The interval is ``expit(centre ± z·sqrt(a²·model variance + b²·draw variance))`` with ``z`` the normal
quantile of the level, widened where needed to contain the estimate shown. This module imports neither
MLflow nor the training code (batch workers unpickle it with the Predictor).
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

from response_model import clinical
from response_model.features import FeatureBlocks
from response_model.modeling.compiled import _Rows
from response_model.pathways import load_pathways, pathway_flags, representative_alteration
from response_model.schema import OUTCOMES, ChildPughClass, PatientRecord

if TYPE_CHECKING:
    from response_model.modeling.predictor import Predictions, Predictor

ModelKey = tuple[str, str]

DEFAULT_LEVEL = 0.8
DEFAULT_MEMBERS = 8
DEFAULT_DRAWS = 16
DRAW_SEED = 20261201  # fixed: the same record always gets the same draws, hence the same interval
#: Percentiles stored per numeric field: 1st to 99th, so no single patient's extreme value is kept.
QUANTILE_LEVELS = np.linspace(0.01, 0.99, 99)
MIN_PATIENTS = 20  # a field (or category) seen in fewer training patients is not stored
#: Fields never drawn: required or identifying; derived (child_pugh_class follows from its five items,
#: nlr is drawn itself rather than from two independent counts); free text.
NOT_DRAWN = frozenset({"patient_id", "age", "sex", "cancer_type", "alterations", "sequencing_panel",
                       "neutrophils", "lymphocytes", "child_pugh_class"})
_EPS = 1e-6
#: Bands of the share of a record's drawable fields that are missing (below 0.25, below 0.6, the rest):
#: the draws' spread gets one factor per band, as drawing many fields independently overstates it more.
MISSING_BANDS = (0.25, 0.6)


def _kind(name: str) -> str | None:
    """``numeric`` (float fields), ``categorical`` (int, bool and enumerated fields) or None (not drawn)."""
    if name in NOT_DRAWN:
        return None
    types = set(typing.get_args(PatientRecord.model_fields[name].annotation)) - {type(None)}
    if types == {float}:
        return "numeric"
    if types <= {int, bool} or all(isinstance(t, type) and issubclass(t, Enum) for t in types):
        return "categorical"
    return None


@lru_cache(maxsize=1)
def _representatives() -> tuple[Any, ...]:
    return tuple(representative_alteration(p) for p in load_pathways())


@dataclass
class FieldDistribution:
    """The training population's distribution of each optional field, as aggregates only.

    ``numeric``: {field: values at :data:`QUANTILE_LEVELS`}; ``categorical``: {field: (values,
    cumulative shares)} over categories seen in at least :data:`MIN_PATIENTS` patients; ``pathways``:
    share of sequenced patients with each pathway (configuration order) switched on; ``n``: patients."""

    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, tuple[list[Any], np.ndarray]] = field(default_factory=dict)
    pathways: np.ndarray | None = None
    n: int = 0

    @classmethod
    def of(cls, records: Sequence[PatientRecord]) -> FieldDistribution:
        """The distribution of ``records`` (the training rows of the bundle)."""
        out = cls(n=len(records))
        for name in PatientRecord.model_fields:
            kind = _kind(name)
            values = [v for v in (getattr(r, name) for r in records) if v is not None]
            if kind is None or len(values) < MIN_PATIENTS:
                continue
            if kind == "numeric":
                out.numeric[name] = np.quantile(np.asarray(values, dtype=float), QUANTILE_LEVELS)
                continue
            kept = [(v, c) for v, c in _counts(values) if c >= MIN_PATIENTS]
            if kept:
                shares = np.cumsum([c for _, c in kept], dtype=float)
                out.categorical[name] = ([v for v, _ in kept], shares / shares[-1])
        sequenced = [r.alterations for r in records if r.alterations is not None]
        if len(sequenced) >= MIN_PATIENTS:
            out.pathways = np.mean([pathway_flags(a) for a in sequenced], axis=0)
        return out

    def summary(self) -> dict[str, Any]:
        """What is stored, for the bundle's metadata (field names only)."""
        return {"patients": self.n, "numeric_fields": sorted(self.numeric),
                "categorical_fields": sorted(self.categorical), "pathways": self.pathways is not None}

    def band(self, record: PatientRecord) -> int:
        """The :data:`MISSING_BANDS` band (0, 1, 2) of the share of drawable fields ``record`` lacks."""
        total = len(self.numeric) + len(self.categorical) + (self.pathways is not None)
        share = len(self.missing(record)) / total if total else 0.0
        return int(np.searchsorted(MISSING_BANDS, share, side="right"))

    def missing(self, record: PatientRecord) -> list[str]:
        """The fields of ``record`` this distribution would fill in (alterations when never sequenced)."""
        names = [n for n in (*self.numeric, *self.categorical) if getattr(record, n) is None]
        if record.alterations is None and self.pathways is not None:
            names.append("alterations")
        return names

    def draws(self, record: PatientRecord, m: int) -> list[PatientRecord]:
        """``m`` copies of ``record`` with its missing fields drawn (none when nothing is missing).

        Latin-hypercube uniforms from :data:`DRAW_SEED`, each field independently; the copies are built
        without re-validation (every value comes from the training population's own values)."""
        missing = self.missing(record)
        if not missing:
            return []
        rng = np.random.default_rng(DRAW_SEED)
        base = dict(record.__dict__)
        filled: dict[str, list[Any]] = {}
        for name in missing:
            if name == "alterations":
                u = _hypercube(rng, m, len(self.pathways))
                reps = _representatives()
                filled[name] = [[reps[k] for k in np.flatnonzero(row < self.pathways)] for row in u]
            elif name in self.numeric:
                filled[name] = np.interp(_hypercube(rng, m, 1)[:, 0], QUANTILE_LEVELS, self.numeric[name]).tolist()
            else:
                values, cumulative = self.categorical[name]
                picks = np.searchsorted(cumulative, _hypercube(rng, m, 1)[:, 0], side="right")
                filled[name] = [values[min(k, len(values) - 1)] for k in picks]
        out = []
        for j in range(m):
            values = {**base, **{name: column[j] for name, column in filled.items()}}
            drawn = PatientRecord.model_construct(**values)
            if record.child_pugh_class is None and drawn.child_pugh_score is not None:
                drawn.child_pugh_class = ChildPughClass(clinical.child_pugh_class(drawn.child_pugh_score))
            out.append(drawn)
        return out


def _counts(values: list[Any]) -> list[tuple[Any, int]]:
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda kv: str(kv[0]))


def _hypercube(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """(m, k) uniforms, each column stratified into m equal bins, one draw per bin."""
    strata = np.column_stack([rng.permutation(m) for _ in range(k)])
    return (strata + rng.random((m, k))) / m


# -- the spread of one model's rows --------------------------------------------------------------


def logodds(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities ``p`` (clipped to [1e-6, 1 − 1e-6])."""
    return logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS))


def _dense(rows: Any) -> np.ndarray:
    return rows.matrix() if isinstance(rows, FeatureBlocks) else np.asarray(rows, dtype=np.float64)


class MemberEvaluator:
    """One ensemble member's probabilities on a dense feature matrix (columns: the bundle's features):
    the compiled logistic part (:class:`~.compiled.CompiledModel`, each row on its own) and the booster's
    own ``predict`` in one call, which for the dozen rows of an answer costs a fraction of the grouped
    evaluation the main models use for their explanations. Checked against the member's own
    ``predict_proba`` on probe rows when made (:meth:`of`); members failing it use their own methods."""

    def __init__(self, model: Any, feature_names: Sequence[str]) -> None:
        from response_model.modeling.compiled import CompiledModel

        self.compiled = CompiledModel(model, feature_names, ())
        self.booster = None if model.gbm_ is None else model.gbm_.booster_
        self.gbm_index = None if self.compiled.gbm is None else self.compiled.gbm["index"]

    @classmethod
    def of(cls, model: Any, feature_names: Sequence[str]) -> Any:
        """A :class:`MemberEvaluator` of ``model`` if it reproduces ``predict_proba`` on probe rows, else
        the model's own methods (:class:`~.compiled.ReferenceModel`)."""
        from response_model.modeling.compiled import TOLERANCE, ReferenceModel, probe_rows

        reference = ReferenceModel(model, feature_names)
        try:
            member = cls(model, feature_names)
            X = probe_rows(len(feature_names))
            if np.allclose(member.probabilities(X), reference.probabilities(X), rtol=0.0, atol=TOLERANCE):
                return member
        except Exception:  # noqa: BLE001,S110 - any surprise: the model's own methods serve
            pass
        return reference

    def probabilities(self, X: Any, groups: Any = None) -> np.ndarray:
        """Probability of the outcome per row (``groups`` accepted for the evaluators' interface)."""
        X = _dense(X)
        if len(X) == 0:
            return np.empty(0)
        cm = self.compiled
        f = np.zeros(len(X))
        if cm.linear is not None:
            # each row on its own: the compiled model's standardisation of every row, then its terms summed
            every = np.arange(len(X))
            layout = _Rows(len(X), lambda rows, columns: X[:, columns], every, every, every[:1], np.zeros_like(every))
            z = cm._standardised(layout, every)
            f += cm.w * ((z * cm.linear["coef"]).sum(axis=1) + cm.linear["intercept"])
        if self.booster is not None:
            f += (1.0 - cm.w) * self.booster.predict(X[:, self.gbm_index], raw_score=True, num_threads=1)
        return cm.probability_of(f)


@dataclass(frozen=True)
class Spread:
    """Per row, on the log-odds scale: ``centre`` (the draws' mean where fields were drawn, else the
    estimate), ``model_var`` (the ensemble's variance at the record as given; rows without draws) and
    ``draw_var`` (the variance over the draws, each scored by one member in turn: model and missing
    fields' spread together; rows with draws). Each row has one of the two, the other is 0."""

    centre: np.ndarray
    model_var: np.ndarray
    draw_var: np.ndarray


def spread(p: np.ndarray, members: Sequence[Any], rows: Any, draw_rows: Any, drawn: np.ndarray, m: int) -> Spread:
    """The :class:`Spread` of rows whose estimate is ``p``.

    ``members``: the ensemble's evaluators; ``rows``: the rows' features (dense matrix or blocks);
    ``drawn``: which rows have draws; ``draw_rows``: the ``m`` draws of each of those rows, row by row
    (``m`` consecutive rows each); draw ``j`` is scored by member ``j mod len(members)``."""
    centre = logodds(p)
    n = len(centre)
    model_var, draw_var = np.zeros(n), np.zeros(n)
    if len(members) < 2:
        return Spread(centre, model_var, draw_var)
    if not drawn.all():
        X = _dense(rows)[~drawn]
        model_var[~drawn] = np.var([logodds(e.probabilities(X)) for e in members], axis=0, ddof=1)
    if drawn.any():
        D = _dense(draw_rows)
        member_of = np.arange(len(D)) % m % len(members)
        scores = np.empty(len(D))
        for b, evaluator in enumerate(members):
            take = member_of == b
            if take.any():
                scores[take] = logodds(evaluator.probabilities(D[take]))
        scores = scores.reshape(-1, m)
        centre[drawn] = scores.mean(axis=1)
        draw_var[drawn] = scores.var(axis=1, ddof=1)
    return Spread(centre, model_var, draw_var)


def bounds(p: np.ndarray, s: Spread, scale: tuple[float, Sequence[float]], level: float, band: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) probabilities at ``level``, widened to contain ``p`` (NaN where ``p`` is);
    ``scale``: the factor on the standard deviation of rows without draws, and those of rows with draws
    per :data:`MISSING_BANDS` band (``band`` of each row)."""
    z = norm.ppf(0.5 + level / 2.0)
    draws_factor = np.asarray(scale[1], dtype=float)[band]
    half = z * np.sqrt(scale[0] ** 2 * s.model_var + draws_factor ** 2 * s.draw_var)
    lower = np.minimum(expit(s.centre - half), p)
    upper = np.maximum(expit(s.centre + half), p)
    return lower, upper


def _solve(coverage: Any, level: float, low: float = 0.1, high: float = 50.0) -> float:
    """The smallest factor in [low, high] whose ``coverage(factor)`` reaches ``level`` (bisection, log scale)."""
    if coverage(low) >= level:
        return low
    if coverage(high) < level:
        return high
    for _ in range(40):
        mid = math.sqrt(low * high)
        low, high = (low, mid) if coverage(mid) >= level else (mid, high)
    return high


def estimate_scale(truth: np.ndarray, versions: Sequence[tuple[np.ndarray, Spread, np.ndarray]], level: float,
                   min_rows: int = 30) -> tuple[float, tuple[float, ...]]:
    """(factor on the sd of rows without draws, factors on the sd of rows with draws per
    :data:`MISSING_BANDS` band) that make the intervals of training rows cover their true probability
    ``truth`` at ``level``. ``versions``: (centres, spreads, bands) of the same rows in several versions
    (as recorded, centred on out-of-fold estimates; with fields hidden, centred on their draws). Each
    band's factor is solved on the rows with draws of that band in every version (the factor of all rows
    with draws where a band has fewer than ``min_rows``); the first on the rows without draws (the factor
    of all rows with draws where there are fewer than ``min_rows``). 1 where nothing can be solved."""
    z = norm.ppf(0.5 + level / 2.0)
    centre = np.concatenate([v[0] for v in versions])
    model_var = np.concatenate([v[1].model_var for v in versions])
    draw_var = np.concatenate([v[1].draw_var for v in versions])
    band = np.concatenate([v[2] for v in versions])
    error = np.abs(centre - logodds(np.tile(truth, len(versions))))
    ok = np.isfinite(error)
    drawn = ok & (draw_var > 0)

    def solve(rows: np.ndarray, var: np.ndarray, fallback: float) -> float:
        if rows.sum() < min_rows:
            return fallback
        return _solve(lambda c: float(np.mean(error[rows] <= z * c * np.sqrt(var[rows]))), level)

    overall = solve(drawn, draw_var, 1.0)
    per_band = tuple(solve(drawn & (band == k), draw_var, overall) for k in range(len(MISSING_BANDS) + 1))
    return solve(ok & (draw_var == 0), model_var, overall), per_band


def hide_at_random(records: Sequence[PatientRecord], share: float, seed: int) -> list[PatientRecord]:
    """Copies of ``records`` with each optional field given hidden with probability ``share`` (seeded),
    re-validated so that derived fields follow; age, sex and cancer type are kept."""
    rng = np.random.default_rng(seed)
    out = []
    for record in records:
        values = {name: getattr(record, name) for name in PatientRecord.model_fields}
        for name in values:
            if name not in ("patient_id", "age", "sex", "cancer_type") and values[name] is not None \
                    and rng.random() < share:
                values[name] = None
        out.append(PatientRecord.model_validate(values))
    return out


# -- the bundle's part ---------------------------------------------------------------------------


class PatientUncertainty:
    """What a bundle needs for per-patient intervals: the ensemble members of each model, the training
    population's :class:`FieldDistribution`, the scale of each model's ensemble spread, the level.

    ``scale_source``: how the scales were estimated (text for the method)."""

    def __init__(self, members: Mapping[ModelKey, Sequence[Any]], population: FieldDistribution,
                 scale: Mapping[ModelKey, tuple[float, Sequence[float]]] | None = None, level: float = DEFAULT_LEVEL,
                 draws: int = DEFAULT_DRAWS, scale_source: str = "not estimated (1)") -> None:
        if not 0.0 < level < 1.0:
            raise ValueError(f"uncertainty level {level!r}: expected a share between 0 and 1, e.g. 0.8")
        if draws < 2:
            raise ValueError(f"uncertainty draws {draws!r}: expected at least 2")
        self.members = {key: list(models) for key, models in members.items()}
        self.population = population
        unscaled = (1.0, (1.0,) * (len(MISSING_BANDS) + 1))
        self.scale = {key: (float(a), tuple(float(v) for v in b))
                      for key, (a, b) in ((k, (scale or {}).get(k, unscaled)) for k in self.members)}
        self.level = float(level)
        self.draws = int(draws)
        self.scale_source = scale_source
        self.evaluators_: dict[ModelKey, list[Any]] = {}

    def compile(self, feature_names: Sequence[str]) -> None:
        """Decide each member's evaluator (checked against its own methods), as the bundle does for its models."""
        self.evaluators_ = {key: [MemberEvaluator.of(m, feature_names) for m in members]
                            for key, members in self.members.items()}

    def serving(self) -> PatientUncertainty:
        """This uncertainty without the members' fitted estimators, only their evaluators: what a predictor
        (and each batch worker it is sent to) needs, without the training code behind the estimators."""
        if not self.evaluators_:
            raise RuntimeError("PatientUncertainty.serving(): compile() it first (the bundle does when it is made)")
        view = copy.copy(self)
        view.members = {key: [None] * len(models) for key, models in self.members.items()}
        return view

    def method(self) -> str:
        """The interval's method in words (shown with every answer)."""
        sizes = sorted({len(m) for m in self.members.values()})
        return (f"{self.level:.0%} per-patient interval: the spread of a {'/'.join(map(str, sizes))}-model bootstrap "
                f"ensemble of each model combined, on the log-odds scale, with the spread of the estimate over "
                f"{self.draws} draws of the patient's missing fields from the training population's distribution "
                "(per-field percentiles and category frequencies, drawn independently of each other and of the "
                f"fields given), each spread scaled by a factor (for the draws, one per band of the share of fields "
                f"missing: below 25 %, below 60 %, more) {self.scale_source}; normal on the log-odds "
                "scale, widened where needed to contain the estimate")

    def metadata(self) -> dict[str, Any]:
        """JSON-safe summary for the bundle's metadata."""
        return {"level": self.level, "draws": self.draws, "scale_source": self.scale_source,
                "members": {f"{c}/{o}": len(m) for (c, o), m in self.members.items()},
                "scale": {f"{c}/{o}": {"ensemble": round(s[0], 4),
                                       "draws_by_missing_share": [round(v, 4) for v in s[1]]}
                          for (c, o), s in self.scale.items()},
                "population": self.population.summary(), "method": self.method()}

    def intervals(self, predictor: Predictor, records: Sequence[PatientRecord], predictions: Predictions,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{outcome: (lower, upper)} per row of ``predictions`` (of ``records``), probabilities; NaN where
        the row has no estimate."""
        m = self.draws
        drawn_records = [self.population.draws(r, m) for r in records]
        drawn_patient = np.array([bool(d) for d in drawn_records])
        drawn_rows = drawn_patient[predictions.patient]
        band = np.array([self.population.band(r) for r in records], dtype=np.intp)[predictions.patient]
        first = np.cumsum([0] + [len(d) for d in drawn_records])
        flat = [r for d in drawn_records for r in d]
        names = list(dict.fromkeys(predictions.regimen.tolist()))
        which = np.array([names.index(r) for r in predictions.regimen], dtype=np.intp)
        rows_drawn = np.flatnonzero(drawn_rows)
        draw_patient = (first[predictions.patient[rows_drawn]][:, None] + np.arange(m)[None, :]).ravel()
        draw_blocks = FeatureBlocks.of_pairs(flat, draw_patient, names, np.repeat(which[rows_drawn], m)) \
            if len(rows_drawn) else None
        out = {}
        for outcome in OUTCOMES:
            p = np.asarray(predictions.probability[outcome], dtype=np.float64)
            lower, upper = np.full(len(p), np.nan), np.full(len(p), np.nan)
            for regimen_class in predictor.regimen_classes:
                key = (regimen_class, outcome)
                mask = (predictions.regimen_class == regimen_class) & np.isfinite(p)
                if key not in self.evaluators_ or not mask.any():
                    continue
                lower[mask], upper[mask] = self._class_bounds(predictor, key, predictions, mask, drawn_rows,
                                                               draw_blocks, rows_drawn, p, band[mask])
            out[outcome] = (lower, upper)
        return out

    def _class_bounds(self, predictor: Predictor, key: ModelKey, predictions: Predictions, mask: np.ndarray,
                      drawn_rows: np.ndarray, draw_blocks: FeatureBlocks | None, rows_drawn: np.ndarray,
                      p: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, _ = predictor.rows_for(predictions.features, mask, predictions.patient)
        drawn = drawn_rows[mask]
        draw_rows = None
        if drawn.any():
            take = np.repeat(np.isin(rows_drawn, np.flatnonzero(mask & drawn_rows)), self.draws)
            draw_rows, _ = predictor.rows_for(draw_blocks, take, draw_blocks.patient_index)
        s = spread(p[mask], self.evaluators_[key], rows, draw_rows, drawn, self.draws)
        return bounds(p[mask], s, self.scale[key], self.level, band)


# -- training ------------------------------------------------------------------------------------


def fit_members(model: Any, X: Any, y: Any, n_members: int, seed: int) -> list[Any]:
    """``n_members`` copies of fitted ``model`` (same parameters) refitted on bootstrap resamples of
    (``X``, ``y``), each with its own random state."""
    from sklearn.base import clone

    rng = np.random.default_rng(seed)
    members = []
    for b in range(n_members):
        take = rng.integers(0, len(X), len(X))
        member = clone(model)
        if "random_state" in member.get_params():
            member.set_params(random_state=int(seed) + 1 + b)
        members.append(member.fit(X.iloc[take], y.iloc[take]))
    return members


def training_spread(main: Any, members: Sequence[Any], population: FieldDistribution,
                    records: Sequence[PatientRecord], regimens: Sequence[str], feature_names: Sequence[str],
                    m: int) -> tuple[np.ndarray, Spread, np.ndarray]:
    """(the main model's probability, :class:`Spread`, missing-share band) of each training record under
    its own regimen, the models evaluated by :class:`MemberEvaluator`."""
    main_eval = MemberEvaluator.of(main, feature_names)
    member_evals = [MemberEvaluator.of(e, feature_names) for e in members]
    names = list(dict.fromkeys(regimens))
    which = np.array([names.index(r) for r in regimens], dtype=np.intp)
    blocks = FeatureBlocks.of_pairs(list(records), np.arange(len(records)), names, which)
    drawn_records = [population.draws(r, m) for r in records]
    drawn = np.array([bool(d) for d in drawn_records])
    flat = [r for d in drawn_records for r in d]
    draw_blocks = FeatureBlocks.of_pairs(flat, np.arange(len(flat)), names, np.repeat(which[drawn], m)) \
        if drawn.any() else None
    p = main_eval.probabilities(blocks)
    band = np.array([population.band(r) for r in records], dtype=np.intp)
    return p, spread(p, member_evals, blocks, draw_blocks, drawn, m), band
