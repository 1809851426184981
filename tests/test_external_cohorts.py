"""External cohorts that differ from the training file are scored with a notice or warning, not refused:
optional mapped columns absent, cancer types the vocabulary lacks, no regimen column (issue 13, point 1).

The CSVs are small synthetic tables with the columns of ``configs/sources/chowell2022.yaml`` (no real data);
one test reads the real training file from ../shared/data when it is there."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.special import expit, logit

from response_model.errors import ConfigError
from response_model.features import build_feature_matrix, feature_names
from response_model.modeling import interpret
from response_model.modeling.unknown_regimen import (
    PREVALENCE_KEY,
    UNKNOWN_REGIMEN,
    mixture_weights,
    predict_unknown_regimen,
    regimen_prevalence,
)
from response_model.regimens import load_catalogue
from response_model.schema import PatientRecord, cancer_types
from response_model.sources import SourceFormatError, load_source

CHOWELL = "configs/sources/chowell2022.yaml"
REAL_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "chowell2022_icb_train.csv"
#: The columns external checkpoint-inhibitor cohorts often lack (issue 13), and the drug class.
EXTERNAL_LACK = ["BMI", "Stage", "HGB", "MSI", "HLA_LOH", "HED", "PDL1_TPS(%)"]
HEADER = ["SAMPLE_ID", "Year of ICI treatment start", "TMB", "PDL1_TPS(%)", "Systemic_therapy_history", "Albumin",
          "CancerType", "NLR", "Age", "FCNA", "Drug", "Sex", "MSI", "Stage", "HLA_LOH", "HED", "Platelets", "HGB",
          "BMI", "PFS_Event", "PFS_Months", "OS_Event", "OS_Months", "Response"]


def chowell_like(path: Path, n: int, seed: int, drop: tuple[str, ...] = (),
                 types: tuple[str, ...] | None = None) -> Path:
    """Write a synthetic table with the Chowell mapping's columns (minus ``drop``); return its path.
    Response depends on TMB, albumin, NLR and the drug class, so that a model has something to learn."""
    rng = np.random.default_rng(seed)
    types = types or cancer_types()
    rows = []
    for i in range(n):
        drug = int(rng.choice([0, 1, 2], p=[0.7, 0.2, 0.1]))
        tmb, albumin, nlr = float(rng.gamma(2, 5)), float(rng.normal(3.9, 0.4)), float(rng.gamma(2, 2.5))
        p = expit(-1.6 + 0.08 * tmb + 0.9 * (albumin - 3.9) - 0.12 * (nlr - 5) + 0.7 * (drug == 1))
        response = int(rng.random() < p)
        pfs = round(float(rng.exponential(12 if response else 4)), 3)
        os_months = round(pfs + float(rng.exponential(8)), 3)
        rows.append({
            "SAMPLE_ID": i + 1, "Year of ICI treatment start": 2016, "TMB": round(tmb, 2),
            "PDL1_TPS(%)": "" if rng.random() < 0.7 else int(rng.integers(0, 100)),
            "Systemic_therapy_history": int(rng.random() < 0.6), "Albumin": round(albumin, 1),
            "CancerType": types[i % len(types)], "NLR": round(nlr, 2), "Age": round(float(rng.uniform(30, 85)), 1),
            "FCNA": round(float(rng.uniform(0, 0.6)), 3), "Drug": drug, "Sex": int(rng.random() < 0.55),
            "MSI": int(rng.random() < 0.05), "Stage": int(rng.random() < 0.8), "HLA_LOH": int(rng.random() < 0.15),
            "HED": round(float(rng.uniform(4, 9)), 2), "Platelets": int(rng.integers(150, 400)),
            "HGB": round(float(rng.normal(12, 1.5)), 1), "BMI": round(float(rng.normal(27, 4)), 1),
            "PFS_Event": 1, "PFS_Months": pfs, "OS_Event": int(rng.random() < 0.6), "OS_Months": os_months,
            "Response": response,
        })
    columns = [c for c in HEADER if c not in drop]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


EXTERNAL_TYPES = ("Melanoma", "NSCLC", "CNS", "Renal", "Unknown primary", "Bladder")


@pytest.fixture(scope="module")
def external_csv(tmp_path_factory) -> Path:
    """An external-like cohort: the often-lacking columns and Drug absent, two unseen cancer types."""
    return chowell_like(tmp_path_factory.mktemp("external") / "external.csv", 60, 7,
                        drop=(*EXTERNAL_LACK, "Drug"), types=EXTERNAL_TYPES)


@pytest.fixture(scope="module")
def chowell_bundle():
    """A small checkpoint-inhibitor bundle fitted on a synthetic Chowell-like cohort (both outcomes), with the
    training regimen counts and feature ranges in its metadata, as ``train`` stores them."""
    import tempfile

    from response_model.modeling.bundle import ResponseModelBundle
    from response_model.modeling.estimators import ResponseClassifier
    from response_model.modeling.train import training_ranges

    with tempfile.TemporaryDirectory() as folder:
        parsed = load_source(CHOWELL, chowell_like(Path(folder) / "train.csv", 300, 1)).parsed
    regimens = [out.regimen for out in parsed.outcomes]
    X = build_feature_matrix(parsed.records, regimens)
    # a few features keep the fit and the bundle's compilation cheap; the cancer types are among them
    used = ["age", "tmb", "albumin", "nlr", "prior_systemic_therapy", "bmi", "haemoglobin", "target_ctla4",
            *(c for c in X.columns if c.startswith("cancer_type_"))]
    models = {}
    for outcome in ("objective_response", "primary_resistance"):
        y = pd.Series([getattr(out, outcome) for out in parsed.outcomes], dtype=float)
        keep = y.notna().to_numpy()
        models[("checkpoint_inhibitor", outcome)] = ResponseClassifier(
            linear_features=used, gbm_features=used, n_estimators=20, min_child_samples=20, n_jobs=1,
        ).fit(X[keep], y[keep].astype(int))
    metadata = {"feature_ranges": training_ranges(X), PREVALENCE_KEY: regimen_prevalence(regimens, load_catalogue())}
    return ResponseModelBundle(models, feature_names=feature_names(), metadata=metadata), parsed


# -- optional columns ---------------------------------------------------------------------------


def test_absent_optional_columns_are_missing_with_one_notice(external_csv):
    from response_model.validate import validation_report

    parsed = load_source(CHOWELL, external_csv).parsed
    assert parsed.ok and len(parsed.records) == 60
    assert all(r.bmi is None and r.haemoglobin is None and r.hed is None and r.msi_status is None
               for r in parsed.records)
    assert all(out.regimen is None for out in parsed.outcomes)
    absent = [n for n in parsed.notices if "optional column(s) absent" in n]
    assert len(absent) == 1 and "'HGB' → haemoglobin" in absent[0] and "'Drug' → regimen" in absent[0]
    assert not any("HGB" in w or "haemoglobin" in w for w in parsed.warnings)  # not per row
    report = validation_report(parsed, CHOWELL, str(external_csv))
    assert "notices (3):" in report and report.count("optional column(s) absent") == 1


def test_an_absent_column_that_is_not_optional_is_still_refused(tmp_path):
    path = chowell_like(tmp_path / "no_albumin.csv", 5, 2, drop=("Albumin",))
    with pytest.raises(SourceFormatError, match=r"mapped column\(s\) 'Albumin' not found"):
        load_source(CHOWELL, path)


def _mapping_with(tmp_path: Path, old: str, new: str) -> Path:
    text = Path(CHOWELL).read_text()
    assert old in text
    path = tmp_path / "mapping.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_a_typo_in_the_optional_key_names_the_key_meant(tmp_path, external_csv):
    mapping = _mapping_with(tmp_path, "bmi: {column: BMI, optional: true}", "bmi: {column: BMI, optinal: true}")
    with pytest.raises(ConfigError, match=r"columns\.bmi: unknown key\(s\) optinal \(did you mean 'optional'\?\)"):
        load_source(mapping, external_csv)
    mapping = _mapping_with(tmp_path, "hed: {column: HED, optional: true}", "hed: {column: HED, optional: often}")
    with pytest.raises(ConfigError, match=r"columns\.hed\.optional: Input should be a valid boolean"):
        load_source(mapping, external_csv)
    mapping = _mapping_with(tmp_path, "age: {column: Age}", "age: {column: Age, optional: true}")
    with pytest.raises(ConfigError, match=r"columns\.age\.optional: age is required by the patient record"):
        load_source(mapping, external_csv)


def test_a_drug_code_the_mapping_lacks_is_read_as_unrecorded_with_one_notice(tmp_path):
    """Drug is ``unlisted: missing``: codes 7 and 9 make those rows' regimen unknown (one notice per code, with
    the lines); Sex has no such mark, so an unlisted sex code still rejects its row, naming field and codes."""
    frame = pd.read_csv(chowell_like(tmp_path / "codes.csv", 12, 3))
    frame.loc[[1, 4, 6], "Drug"] = [7, 9, 7]
    frame.loc[2, "Sex"] = 5
    frame.to_csv(tmp_path / "codes.csv", index=False)
    parsed = load_source(CHOWELL, tmp_path / "codes.csv").parsed
    assert len(parsed.records) == 11 and [e.line for e in parsed.rejected] == [4]
    assert "sex: '5' in column 'Sex' is not one of the coded values" in str(parsed.rejected[0].errors)
    notices = [n for n in parsed.notices if "in column 'Drug'" in n]
    assert len(notices) == 2 and notices[0].startswith("2 row(s) (line 3, 8): regimen: '7'")
    assert "scored with the regimen unrecorded" in notices[0] and notices[1].startswith("1 row(s) (line 6)")
    by_id = {r.patient_id: out.regimen for r, out in zip(parsed.records, parsed.outcomes)}
    assert [by_id[f"CHOWELL-{i}"] for i in (2, 5, 7)] == [None, None, None]
    assert by_id["CHOWELL-1"] is not None


def test_unlisted_missing_is_refused_where_it_cannot_apply(tmp_path, external_csv):
    mapping = _mapping_with(tmp_path, "fcna: {column: FCNA}", "fcna: {column: FCNA, unlisted: missing}")
    with pytest.raises(ConfigError, match=r"columns\.fcna\.unlisted: 'missing' needs a `values:` map"):
        load_source(mapping, external_csv)
    coded = "values: {1: male, 0: female}"
    mapping = _mapping_with(tmp_path, coded + "}", coded + ", unlisted: missing}")
    with pytest.raises(ConfigError, match=r"columns\.sex\.unlisted: .*sex is required"):
        load_source(mapping, external_csv)


# -- unseen cancer types ------------------------------------------------------------------------


def test_an_unseen_cancer_type_is_kept_with_a_warning_and_its_features_missing():
    record = PatientRecord(age=60, sex="male", cancer_type="CNS")
    assert record.cancer_type == "CNS" and record.unseen_cancer_type
    assert any("'CNS' is not one of the 16 cancer types" in w for w in record.warnings())
    X = build_feature_matrix([record, PatientRecord(age=60, sex="male", cancer_type="melanoma")])
    columns = [c for c in X.columns if c.startswith("cancer_type_")]
    assert len(columns) == 16 and X.loc[0, columns].isna().all()
    assert X.loc[1, "cancer_type_melanoma"] == 1 and X.loc[1, columns].sum() == 1
    with pytest.raises(ValueError, match=r"'Melanom' is not a known cancer type \(did you mean 'Melanoma'\?\)"):
        PatientRecord(age=60, sex="male", cancer_type="Melanom")


def test_unseen_types_are_one_notice_per_value_and_flag_out_of_distribution(external_csv, chowell_bundle):
    parsed = load_source(CHOWELL, external_csv).parsed
    unseen = [n for n in parsed.notices if "is not one of the 16 cancer types" in n]
    assert len(unseen) == 2 and unseen[0].startswith("10 row(s) (line 4, line 10") and "'CNS'" in unseen[0]
    bundle, _ = chowell_bundle
    cns = next(r for r in parsed.records if r.cancer_type == "CNS")
    predictor = bundle.predictor()
    predictions = predictor.predict([cns], [["anti_pd1_pdl1"]])
    ood = interpret.out_of_distribution(predictor.metadata, predictions.feature_row(0), cns)
    assert ood["flagged"] and ood["unseen_categories"][0]["value"] == "CNS"
    melanoma = next(r for r in parsed.records if r.cancer_type == "Melanoma")
    assert interpret.out_of_distribution(predictor.metadata, None, melanoma)["unseen_categories"] == []


# -- no regimen: the training mix ---------------------------------------------------------------


def test_the_bundle_stores_training_regimen_counts_and_the_mixture_pools_log_odds(chowell_bundle, external_csv):
    bundle, training = chowell_bundle
    counts = bundle.metadata[PREVALENCE_KEY]["checkpoint_inhibitor"]
    assert sum(counts.values()) == 300 and set(counts) == {"anti_pd1_pdl1", "anti_ctla4_pd1_pdl1", "anti_ctla4"}
    weights = mixture_weights(bundle.metadata, "checkpoint_inhibitor")
    assert math.isclose(sum(weights.values()), 1.0) and weights["anti_pd1_pdl1"] > 0.5
    records = load_source(CHOWELL, external_csv).parsed.records[:8]
    predictor = bundle.predictor()
    mixed = predict_unknown_regimen(predictor, records, "checkpoint_inhibitor", explain=True)
    for outcome in ("objective_response", "primary_resistance"):
        by_regimen = np.column_stack([predictor.predict(records, [[name]] * len(records)).probability[outcome]
                                      for name in weights])
        expected = expit(logit(by_regimen) @ np.array(list(weights.values())))
        np.testing.assert_allclose(mixed.probability[outcome], expected, rtol=1e-9)
        assert np.all((by_regimen.min(axis=1) <= mixed.probability[outcome] + 1e-12)
                      & (mixed.probability[outcome] <= by_regimen.max(axis=1) + 1e-12))
        # additivity: base value + Σ mixed contributions = the mixture's log-odds, through the calibration
        explained = mixed.explanations[outcome]
        evaluator = predictor.evaluators[("checkpoint_inhibitor", outcome)]
        log_odds = explained.base_value + explained.values.sum(axis=1)
        np.testing.assert_allclose(evaluator.probability_of(log_odds), mixed.probability[outcome], atol=1e-9)
    assert "anti_pd1_pdl1" in mixed.warning and "training prevalence" in mixed.warning


def test_evaluate_scores_patients_without_a_regimen_under_the_mix(chowell_bundle, external_csv):
    from response_model.modeling import registry

    bundle, _ = chowell_bundle
    parsed = load_source(CHOWELL, external_csv).parsed
    report = registry.evaluate(bundle, parsed)  # evaluation_report adds the bootstrap intervals: not needed here
    assert report["n"] == 60 and report["response"]["auc"] is not None
    assert report["regimen_unrecorded"]["scored"] and report["regimen_unrecorded"]["n"] == 60
    assert "training prevalence" in report["regimen_unrecorded"]["note"]
    json.dumps(report)
    without_counts = type(bundle)(bundle.models, feature_names=bundle.feature_names)  # a bundle from before
    unscored = registry.evaluate(without_counts, parsed)
    assert unscored["n"] == 0 and not unscored["regimen_unrecorded"]["scored"]
    assert "regimen_prevalence" in unscored["regimen_unrecorded"]["note"]


def test_score_adds_the_unrecorded_rows_with_warnings(chowell_bundle, external_csv, tmp_path):
    from response_model.modeling.batch import NO_REGIMEN_NOTICE, score_file

    bundle, _ = chowell_bundle
    out = tmp_path / "scores.csv"
    result = score_file(bundle, external_csv, out, source=CHOWELL, processes=False, n_workers=1, progress=False,
                        explain=True)
    assert NO_REGIMEN_NOTICE in result.notices and any("optional column(s) absent" in n for n in result.notices)
    table = pd.read_csv(out)
    mixed = table[table["regimen"] == UNKNOWN_REGIMEN]
    assert len(mixed) == 60 and mixed["rank"].isna().all()
    assert mixed["warnings"].str.contains("regimen: not recorded").all()
    # the bundle stores no per-regimen validation: the mix says so, naming every member with its share
    assert (mixed["validation"] == "unchecked").all()
    assert mixed["validation_warning"].str.contains(r"anti_pd1_pdl1 \(\d+% of the mix: not checked").all()
    cns = table[table["input_row"] == 2]  # line 4 of the file: CancerType CNS
    assert cns["warnings"].str.contains("'CNS' is not one of the 16 cancer types").all()
    assert table.loc[table["input_row"] == 0, "warnings"].isna().any()  # a Melanoma patient: no warning
    shap = [c for c in table.columns if c.startswith("shap_objective_response__") and not c.endswith("base_value")]
    row = mixed.iloc[0]
    total = row["shap_objective_response__base_value"] + row[shap].sum()
    evaluator = bundle.predictor().evaluators[("checkpoint_inhibitor", "objective_response")]
    assert evaluator.probability_of(np.array([total]))[0] == pytest.approx(row["p_objective_response"], abs=1e-9)


def test_validate_prints_the_notices_once(external_csv):
    from response_model.cli import main

    result = CliRunner().invoke(main, ["validate", "--source", CHOWELL, str(external_csv)])
    assert result.exit_code == 0, result.output
    assert result.output.count("optional column(s) absent from the file") == 1
    assert "'Unknown primary' is not one of the 16 cancer types" in result.output


def test_the_real_file_with_the_external_columns_removed(tmp_path):
    if not REAL_FILE.is_file():
        pytest.skip(f"{REAL_FILE} is not here (the shared real cohort is not part of the repository)")
    frame = pd.read_csv(REAL_FILE).drop(columns=[*EXTERNAL_LACK, "Drug"])
    path = tmp_path / "real_without.csv"
    frame.to_csv(path, index=False)
    parsed = load_source(CHOWELL, path).parsed
    assert len(parsed.records) == len(load_source(CHOWELL, REAL_FILE).parsed.records)
    assert all(r.bmi is None and r.stage_iv is None and r.pdl1_tps is None for r in parsed.records)
    assert sum("optional column(s) absent" in n for n in parsed.notices) == 1


def test_the_api_answer_for_an_unseen_type_warns_and_is_flagged(chowell_bundle):
    from types import SimpleNamespace

    from response_model.service.answers import predict_many
    from response_model.service.models import PredictionRequest, PredictionResponse

    bundle, _ = chowell_bundle
    loaded = SimpleNamespace(bundle=bundle, name="chowell-like", version="1")
    request = PredictionRequest(patient={"age": 61, "sex": "female", "cancer_type": "Unknown primary", "tmb": 12},
                                regimens=["anti_pd1_pdl1"])
    answer = PredictionResponse.model_validate(predict_many(loaded, [request])[0])
    assert answer.out_of_distribution.flagged
    assert answer.out_of_distribution.unseen_categories[0]["value"] == "Unknown primary"
    assert any("'Unknown primary' is not one of the 16 cancer types" in w for w in answer.warnings)


def test_training_stores_the_regimen_counts_in_the_bundle(smoke_model):
    from response_model.modeling.predict import as_bundle, load_model

    bundle = as_bundle(load_model(str(smoke_model["export_dir"])))
    counts = bundle.metadata[PREVALENCE_KEY]
    assert {"checkpoint_inhibitor", "tki_antiangiogenic"} <= set(counts)
    catalogue = load_catalogue()
    for regimen_class, by_regimen in counts.items():
        assert all(catalogue[name].regimen_class == regimen_class and n > 0 for name, n in by_regimen.items())
    assert 0 < sum(sum(c.values()) for c in counts.values()) <= 1200  # the smoke cohort's patients


def test_the_compiled_models_score_an_unseen_type_as_the_models_themselves(chowell_bundle, external_csv):
    from response_model.modeling.predictor import Predictor

    bundle, _ = chowell_bundle
    records = [r for r in load_source(CHOWELL, external_csv).parsed.records if r.unseen_cancer_type]
    assert len(records) == 20
    fast = bundle.predictor().predict(records, [["anti_pd1_pdl1"]] * len(records), explain=True)
    own = Predictor.reference(bundle).predict(records, [["anti_pd1_pdl1"]] * len(records), explain=True)
    for outcome in ("objective_response", "primary_resistance"):
        np.testing.assert_allclose(fast.probability[outcome], own.probability[outcome], rtol=0, atol=1e-9)
