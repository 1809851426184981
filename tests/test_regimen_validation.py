"""Per-regimen validation: the metrics training stores, the gate's per-regimen rule (withhold | warn) as the
API, batch and page answer it, promotion's check of it, and clear configuration errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from response_model.errors import ConfigError
from response_model.modeling.regimen_validation import mixture_validation, regimen_decisions, validation_metadata

GOOD = {"n": 300, "events": 80, "auc": 0.72, "auc_lower": 0.66, "auc_upper": 0.78, "calibration_slope": 0.95,
        "calibration_slope_lower": 0.7, "calibration_slope_upper": 1.2}
WEAK = {**GOOD, "auc": 0.55, "auc_lower": 0.44, "calibration_slope": 0.34}
SMALL = {**GOOD, "n": 40, "events": 6}


def _metrics(**by_regimen):
    return {o: dict(by_regimen) for o in ("objective_response", "primary_resistance")}


@pytest.mark.parametrize("on_fail", ["withhold", "warn"])
def test_a_regimen_failing_a_rule_is_withheld_or_warned_naming_the_metric(on_fail):
    gate = {"min_patients": 100, "min_events": 10, "auc_lower": 0.5, "calibration_slope": [0.6, 1.4],
            "on_fail": on_fail, "on_too_few": "warn"}
    found = regimen_decisions(_metrics(lenvatinib=GOOD, tislelizumab=WEAK, ramucirumab=SMALL),
                              ["lenvatinib", "tislelizumab", "ramucirumab", "cabozantinib"], gate)
    assert found["lenvatinib"] == {**found["lenvatinib"], "status": "validated", "served": True, "warning": None}
    weak = found["tislelizumab"]
    assert weak["status"] == "failed" and weak["served"] is (on_fail == "warn")
    assert "objective response: AUC (lower 95 % bound) 0.44 (gate ≥ 0.5)" in weak["warning"]
    assert "calibration slope 0.34 (gate 0.6 to 1.4)" in weak["warning"]
    small = found["ramucirumab"]
    assert small["status"] == "too_few" and small["served"] is True
    assert "not validated — too few patients (40 patients" in small["warning"]
    # a regimen no training patient received cannot be validated either
    assert found["cabozantinib"]["status"] == "too_few" and "(0 patients" in found["cabozantinib"]["warning"]


def test_too_few_can_be_withheld_and_no_gate_means_unchecked():
    found = regimen_decisions(_metrics(ramucirumab=SMALL), ["ramucirumab"], {"min_patients": 100,
                                                                             "on_too_few": "withhold"})
    assert found["ramucirumab"]["served"] is False
    unchecked = regimen_decisions(_metrics(ramucirumab=SMALL), ["ramucirumab"], None)["ramucirumab"]
    assert unchecked["status"] == "unchecked" and unchecked["served"] and "not checked" in unchecked["warning"]


def test_a_mixture_takes_its_worst_members_status_and_names_each_weak_member():
    gate = {"min_patients": 100, "min_events": 10, "auc_lower": 0.5, "on_fail": "warn", "on_too_few": "warn"}
    meta = validation_metadata(_metrics(lenvatinib=GOOD, tislelizumab=WEAK, ramucirumab=SMALL),
                               ["lenvatinib", "tislelizumab", "ramucirumab"], gate)
    mixed = mixture_validation({"regimen_validation": meta}, {"lenvatinib": 0.7, "ramucirumab": 0.2,
                                                              "tislelizumab": 0.1})
    assert mixed["status"] == "failed"
    assert "ramucirumab (20% of the mix: not validated — too few patients)" in mixed["warning"]
    assert "tislelizumab (10% of the mix: not validated — fails" in mixed["warning"]
    assert "lenvatinib" not in mixed["warning"]
    only_good = mixture_validation({"regimen_validation": meta}, {"lenvatinib": 1.0, "tislelizumab": 0.0})
    assert only_good == {"status": "validated", "warning": None}


def test_metadata_is_json_ready():
    meta = validation_metadata(_metrics(sorafenib={**GOOD, "calibration_slope": math.nan}), ["sorafenib"],
                               {"calibration_slope": [0.6, 1.4], "on_fail": "warn"})
    entry = meta["regimens"]["sorafenib"]
    assert entry["outcomes"]["objective_response"]["calibration_slope"] is None
    assert "calibration slope not computable" in entry["warning"]  # a rule that cannot be checked fails


def test_the_bootstrap_metrics_are_those_of_the_resampled_patients():
    """The bootstrap weighs each patient by how often it was drawn; that must give the metrics of the
    resample itself (binary_metrics), ties in the probabilities included."""
    import numpy as np

    from response_model.modeling.metrics import binary_metrics
    from response_model.modeling.regimen_validation import _weighted_auc, _weighted_logistic

    rng = np.random.default_rng(3)
    y = (rng.random(250) < 0.3).astype(float)
    p = np.clip(np.round(rng.random(250) * 0.6 + 0.15 * y, 2), 0.01, 0.99)
    drawn = rng.integers(0, 250, 250)
    counts = np.bincount(drawn, minlength=250)[None, :].astype(float)
    expected = binary_metrics(y[drawn].astype(int), p[drawn])
    lp = np.log(p) - np.log1p(-p)
    intercept, slope = _weighted_logistic(y, lp, counts, free_slope=True)
    citl, _ = _weighted_logistic(y, lp, counts, free_slope=False)
    assert _weighted_auc(y, p, counts)[0] == pytest.approx(expected["auc"], abs=1e-12)
    assert slope[0] == pytest.approx(expected["calibration_slope"], abs=1e-7)
    assert intercept[0] == pytest.approx(expected["calibration_intercept"], abs=1e-7)
    assert citl[0] == pytest.approx(expected["calibration_in_the_large"], abs=1e-7)


def _config_with(tmp_path, per_regimen):
    config = yaml.safe_load(Path("configs/train/default.yaml").read_text())
    config["gate"]["per_regimen"] = per_regimen
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("per_regimen", "message"), [
    ({"on_fail": "hide"}, "gate.per_regimen.on_fail: Input should be 'withhold' or 'warn' (got 'hide')"),
    ({"calibration_slop": [0.6, 1.4]}, "unknown key(s) calibration_slop (did you mean 'calibration_slope'?)"),
    ({"calibration_slope": [1.4, 0.6]}, "gate.per_regimen.calibration_slope: [1.4, 0.6] is empty"),
    ({"min_patients": -1}, "gate.per_regimen.min_patients: Input should be greater than or equal to 0"),
])
def test_config_errors_are_clear(tmp_path, per_regimen, message):
    from response_model.settings import load_training_config

    with pytest.raises(ConfigError) as error:
        load_training_config(_config_with(tmp_path, per_regimen))
    assert message in str(error.value) and "train.yaml" in str(error.value)


def test_the_default_config_has_a_valid_per_regimen_gate():
    from response_model.settings import load_training_config

    gate = load_training_config("configs/train/default.yaml")["gate"]["per_regimen"]
    assert gate["on_fail"] in ("withhold", "warn") and gate["min_patients"] > 0


def test_promotion_reports_the_per_regimen_decisions_and_refuses_another_gate():
    import json

    from response_model.modeling.registry import check_gate, per_regimen_reasons

    gate = {"on_fail": "withhold", "auc_lower": 0.5}
    passed, reasons = check_gate({"response.tki_antiangiogenic.auc_lower": 0.7},
                                 {"auc_lower": 0.6, "per_regimen": gate})
    assert passed and not any("per_regimen" in r for r in reasons)
    tags = {"regimen_validation.gate": json.dumps(gate, sort_keys=True), "regimen_validation.withheld": "lenvatinib",
            "regimen_validation.warned": ""}
    ok, reasons = per_regimen_reasons(tags, gate)
    assert ok and reasons[0] == "per-regimen gate: 1 regimen(s) withheld (not served): lenvatinib"
    ok, reasons = per_regimen_reasons(tags, {**gate, "on_fail": "warn"})
    assert not ok and "retrain" in reasons[0]
    assert per_regimen_reasons({}, gate)[0] is False


# -- end to end on the smoke model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_bundle(smoke_model):
    from response_model.modeling.predict import as_bundle, load_model

    return as_bundle(load_model(str(smoke_model["export_dir"])))


def test_training_stores_every_regimens_metrics(smoke_bundle, smoke_model):
    from response_model.dataset import parse_cohort
    from response_model.sources.simulator import simulate_cohort

    stored = smoke_bundle.metadata["regimen_validation"]
    assert stored["gate"] is None  # tests/data/train_smoke.yaml has no per-regimen gate
    frame = parse_cohort(simulate_cohort(1200, 3).cohort).frame()
    names = {r.name for r in smoke_bundle.candidate_regimens()}
    assert set(stored["regimens"]) == names
    for regimen, decision in stored["regimens"].items():
        assert decision["status"] == "unchecked" and decision["served"]
        labelled = frame.loc[frame["regimen"] == regimen, "objective_response"].dropna()
        entry = decision["outcomes"]["objective_response"]
        assert entry["n"] == len(labelled) and entry["events"] == int(labelled.sum())
        if entry["auc"] is not None:
            assert entry["auc_lower"] <= entry["auc"] <= entry["auc_upper"]


def _with_gate(bundle, on_fail):
    """A copy of ``bundle`` whose per-regimen decisions follow a gate the best regimen alone passes."""
    from response_model.modeling.bundle import ResponseModelBundle

    stored = bundle.metadata["regimen_validation"]["regimens"]
    metrics = {o: {r: d["outcomes"][o] for r, d in stored.items() if o in d["outcomes"]}
               for o in ("objective_response", "primary_resistance")}
    auc = sorted((m["auc"], r) for r, m in metrics["objective_response"].items() if m.get("auc") is not None)
    threshold = (auc[-1][0] + auc[-2][0]) / 2
    gate = {"auc": {"min": threshold}, "on_fail": on_fail}
    # only the response rule: resistance AUCs are left unchecked
    metrics["primary_resistance"] = {r: {**m, "auc": 1.0} for r, m in metrics["primary_resistance"].items()}
    meta = copy.deepcopy(bundle.metadata)
    meta["regimen_validation"] = validation_metadata(metrics, list(stored), gate)
    copied = ResponseModelBundle(bundle.models, feature_names=bundle.feature_names, catalogue=bundle.catalogue,
                                 metadata=meta)
    return copied, auc[-1][1], auc[0][1], threshold


@pytest.mark.parametrize("on_fail", ["withhold", "warn"])
def test_the_api_withholds_or_warns_as_configured(smoke_bundle, on_fail):
    from response_model.modeling.batch import score_table
    from response_model.schema import PatientRecord
    from response_model.service.answers import predict_many
    from response_model.service.holder import LoadedModel
    from response_model.service.models import EXAMPLE_PATIENT, PredictionRequest, PredictionResponse

    bundle, best, worst, threshold = _with_gate(smoke_bundle, on_fail)
    loaded = LoadedModel(bundle, "test", "hcc-smoke", "1")
    request = PredictionRequest.model_validate({"patient": EXAMPLE_PATIENT, "regimens": [worst, best]})
    answer = predict_many(loaded, [request])[0]
    for item in answer["regimens"]:
        item.pop("shap", None)
    assert answer == PredictionResponse.model_validate(answer).model_dump(mode="json")
    items = {it["regimen"]: it for it in answer["regimens"]}
    assert items[best]["validation"]["status"] == "validated" and items[best]["validation"]["warning"] is None
    assert items[best]["objective_response"]["probability"] is not None and items[best]["rank"] == 1
    failed = items[worst]
    assert failed["validation"]["status"] == "failed"
    wording = f"objective response: AUC {stored_auc(smoke_bundle, worst):.2f} (gate ≥ {threshold:g})"
    if on_fail == "withhold":
        assert failed["validation"]["served"] is False and failed["rank"] is None
        assert failed["objective_response"]["probability"] is None and failed["explanations"] == {}
        assert answer["not_scored"] == [{"regimen": worst, "reason": failed["validation"]["warning"]}]
        assert wording in answer["not_scored"][0]["reason"]
    else:
        assert failed["validation"]["served"] is True and failed["rank"] == 2
        assert failed["objective_response"]["probability"] is not None and answer["not_scored"] == []
        assert wording in failed["validation"]["warning"]
    table = score_table(bundle.predictor(), [PatientRecord.model_validate(EXAMPLE_PATIENT)])
    row = table.set_index("regimen").loc[worst]
    assert row["validation"] == "failed" and wording in row["validation_warning"]
    assert math.isnan(row["p_objective_response"]) is (on_fail == "withhold")


def stored_auc(bundle, regimen):
    return bundle.metadata["regimen_validation"]["regimens"][regimen]["outcomes"]["objective_response"]["auc"]


def test_the_page_shows_the_status_and_the_withheld_regimens(smoke_bundle):
    from response_model.service.answers import predict_many
    from response_model.service.holder import LoadedModel
    from response_model.service.models import EXAMPLE_PATIENT, PredictionRequest
    from response_model.service.web import _ENV, CSRF_FIELD, _result_view, form_fields, form_groups

    bundle, best, worst, _ = _with_gate(smoke_bundle, "withhold")
    request = PredictionRequest.model_validate({"patient": EXAMPLE_PATIENT, "regimens": [worst, best]})
    answer = predict_many(LoadedModel(bundle, "test", "hcc-smoke", "1"), [request])[0]
    regimens = [{"name": r.name, "label": r.label, "regimen_class": r.regimen_class}
                for r in bundle.candidate_regimens()]
    html = _ENV.get_template("page.html").render(  # the context web._page renders the page with
        csrf_token="t", csrf_field=CSRF_FIELD, key=SimpleNamespace(name="test", role="clinician"),
        groups=form_groups(), values={f.name: f.default for f in form_fields().values()},
        chosen={worst, best}, regimens=regimens, errors={}, source="fields", json_text="",
        result=_result_view(answer), model={"name": "hcc-smoke", "version": "1", "label": None})
    assert 'id="not-scored"' in html and f'data-regimen="{worst}"' in html
    assert 'data-status="validated"' in html
