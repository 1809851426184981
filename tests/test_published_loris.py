"""The published LORIS formula as a baseline and as the project's offset; test-fold hiding in CV."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from response_model.features import feature_names
from response_model.modeling import PublishedLoris, ResponseClassifier, cross_validate
from response_model.modeling.baselines import LogisticBaseline
from response_model.modeling.compiled import CompiledModel, compile_model
from response_model.modeling.published import LinearScore, published_score

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "chowell2022_icb_train.csv"


def _patients(rows: list[dict]) -> pd.DataFrame:
    """Feature rows (every bundle column, NaN unless given; cancer-type one-hots 0 unless given)."""
    frame = pd.DataFrame(rows, dtype=float).reindex(columns=list(feature_names()))
    types = [c for c in frame.columns if c.startswith("cancer_type_")]
    frame[types] = frame[types].fillna(0.0)
    return frame


HAND = [
    # 0.0371·10 − 0.8775 + 0.5382·4 − 0.033·3 + 0.0049·60 − 0.0086 (melanoma) − 2.0886
    ({"tmb": 10, "prior_systemic_therapy": 1, "albumin": 4.0, "nlr": 3, "age": 60, "cancer_type_melanoma": 1},
     -0.2559),
    # capped: 0.0371·50 + 0.5382·3.5 − 0.033·25 + 0.0049·85 − 1.1169 (pancreatic) − 2.0886
    ({"tmb": 80, "prior_systemic_therapy": 0, "albumin": 3.5, "nlr": 30, "age": 90, "cancer_type_pancreatic": 1},
     0.1247),
    # no listed cancer type: 0.5382·4 − 0.033·2 + 0.0049·50 − 2.0886
    ({"tmb": 0, "prior_systemic_therapy": 0, "albumin": 4.0, "nlr": 2, "age": 50}, 0.2432),
]


def test_published_formula_on_hand_computed_patients():
    X = _patients([row for row, _ in HAND])
    model = PublishedLoris().fit(X)
    expected = np.array([s for _, s in HAND])
    assert np.allclose(model.decision_function(X), expected, atol=1e-4)
    assert np.allclose(model.predict_proba(X)[:, 1], expit(expected), atol=1e-4)
    assert "Nature Cancer 2024" in model.formula_.citation_
    resistance = PublishedLoris(outcome="primary_resistance").fit(X)
    assert np.allclose(resistance.predict_proba(X)[:, 1], 1.0 - expit(expected), atol=1e-4)


def test_published_formula_fills_a_missing_input_with_the_training_median():
    X = _patients([row for row, _ in HAND])
    model = PublishedLoris().fit(X)
    gap = X.iloc[[0]].copy()
    gap["albumin"] = np.nan  # training median of albumin: 4.0, patient 0's own value
    assert model.decision_function(gap)[0] == pytest.approx(-0.2559, abs=1e-4)


def test_unknown_published_score_is_named():
    with pytest.raises(ValueError, match="unknown published score 'loris_typo'.*loris_pan_cancer"):
        published_score("loris_typo")


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real cohort not available at {REAL_DATA}")
def test_published_loris_reproduces_auc_0741_on_the_shared_cohort():
    from response_model.features import build_feature_matrix
    from response_model.sources import load_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_source(ROOT / "configs" / "sources" / "chowell2022.yaml", REAL_DATA)
    X = build_feature_matrix(loaded.parsed.records, [o.regimen for o in loaded.parsed.outcomes])
    y = np.array([o.objective_response for o in loaded.parsed.outcomes], dtype=float)
    p = PublishedLoris().fit(X).predict_proba(X)[:, 1]
    assert roc_auc_score(y, p) == pytest.approx(0.741, abs=0.0005)


def _cohort(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Patients whose response follows the published score plus an FCNA effect it lacks."""
    rng = np.random.default_rng(seed)
    types = [c for c in feature_names() if c.startswith("cancer_type_")]
    rows = [{"tmb": rng.lognormal(1.5, 1.0), "prior_systemic_therapy": float(rng.random() < 0.5),
             "albumin": rng.normal(3.8, 0.5), "nlr": rng.lognormal(1.2, 0.6), "age": rng.normal(62, 12),
             "fcna": rng.beta(2, 6), "platelets": rng.normal(250, 60), types[rng.integers(len(types))]: 1.0}
            for _ in range(n)]
    X = _patients(rows)
    X.loc[rng.random(n) < 0.1, "nlr"] = np.nan
    lp = LinearScore().fit(X).log_odds(X) - 2.0 * (X["fcna"].to_numpy() - 0.25)
    return X, (rng.random(n) < expit(lp)).astype(int)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_offset_model_explains_exactly_and_compiles(weight):
    X, y = _cohort()
    model = ResponseClassifier(offset="loris_pan_cancer", linear_weight=weight, linear_features=["fcna", "platelets"],
                               gbm_features=["fcna", "tmb", "albumin"], n_estimators=20, C=1.0).fit(X, y)
    contributions, base = model.explain(X)
    assert np.abs(base + contributions.sum(axis=1) - model.decision_function(X)).max() < 1e-9
    assert {"tmb", "albumin", "cancer_type_melanoma", "fcna"} <= set(contributions.columns)
    assert model.linear_.coefficients_["fcna"] < 0  # the extension found the effect the offset lacks
    compiled = compile_model(model, feature_names())
    assert isinstance(compiled, CompiledModel)  # it reproduced the model's own methods on the probe rows
    rows = X.iloc[:5].to_numpy()
    assert np.allclose(compiled.probabilities(rows), model.predict_proba(X.iloc[:5])[:, 1], atol=1e-12, rtol=0)


def test_recalibrated_offset_turns_round_for_the_opposite_outcome():
    X, y = _cohort()
    params = {"offset": "loris_pan_cancer", "linear_weight": 1.0, "linear_features": ["fcna"]}
    response = ResponseClassifier(**params).fit(X, y)
    resistance = ResponseClassifier(**params).fit(X, 1 - y)
    assert response.offset_.scale_ > 0 > resistance.offset_.scale_
    assert roc_auc_score(1 - y, resistance.predict_proba(X)[:, 1]) > 0.6


def test_interaction_constraints_keep_trees_within_their_groups():
    X, y = _cohort()
    model = ResponseClassifier(linear_weight=0.0, gbm_features=["tmb", "albumin", "fcna", "nlr"], num_leaves=4,
                               n_estimators=30, min_child_samples=10, interaction_constraints=[["tmb", "albumin"]])
    model.fit(X, y)
    names = model.gbm_features_
    for tree in model.gbm_.booster_.dump_model()["tree_info"]:
        used, stack = set(), [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                used.add(names[node["split_feature"]])
                stack += [node["left_child"], node["right_child"]]
        assert used <= {"tmb", "albumin"} or len(used) <= 1


class _Seen(LogisticBaseline):
    """Records whether each fit and prediction saw any value of ``fcna`` (class-level, shared across clones)."""

    seen: list[tuple[str, bool]] = []

    def fit(self, X, y):
        _Seen.seen.append(("fit", bool(X["fcna"].notna().any())))
        return super().fit(X, y)

    def predict_proba(self, X):
        _Seen.seen.append(("predict", bool(X["fcna"].notna().any())))
        return super().predict_proba(X)


def test_cross_validate_hides_columns_in_test_folds_only():
    X, y = _cohort(200)
    _Seen.seen = []
    cross_validate(X[["fcna", "albumin", "tmb"]], y, models={"seen": _Seen()}, n_splits=3, n_repeats=1,
                   progress=False, hide_in_test=["fcna"])
    assert _Seen.seen == [("fit", True), ("predict", False)] * 3
