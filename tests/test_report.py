"""The validation report and model card (issue 5 §2): CLI, MLflow artifact, endpoint roles, Chromium rendering."""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SMOKE_PSEUDONYM_KEY, require_service

from response_model.cli import main
from response_model.config import load_yaml
from response_model.report import REPORT_ARTIFACT, SECTIONS, flag_subgroups

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def store(smoke_model):
    """The smoke model's tracking store, selected for the duration of this module."""
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])
        mp.setenv("RESPONSE_MODEL_PSEUDONYM_KEY", SMOKE_PSEUDONYM_KEY)
        mp.chdir(smoke_model["folder"])
        mlflow.set_tracking_uri(smoke_model["tracking_uri"])
        yield smoke_model
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def written(store, tmp_path_factory):
    """(path, HTML) of the report the CLI wrote for the smoke model."""
    out = tmp_path_factory.mktemp("report") / "smoke-report.html"
    result = CliRunner().invoke(main, ["report", "--model-uri", store["model_uri"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"logged to run {store['run_id']}" in result.output
    return out, out.read_text(encoding="utf-8")


def test_cli_writes_a_self_contained_report_logged_to_the_run(store, written):
    path, html = written
    # self-contained: every image is embedded, nothing is fetched
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "research use — trained on simulated data" in html   # the smoke model is simulated
    logged = mlflow.artifacts.download_artifacts(run_id=store["run_id"], artifact_path=REPORT_ARTIFACT,
                                                 dst_path=str(path.parent / "logged"))
    with open(logged, encoding="utf-8") as handle:
        assert handle.read() == html


def test_report_content(written):
    _, html = written
    for section, heading in SECTIONS:
        assert f'<section id="{section}">' in html and f"<h2>{heading}</h2>" in html
    # data provenance: digest, flow and Table 1 come from the run
    assert "dataset digest" in html and "labelled (included)" in html and "age, years" in html
    # every regimen class × outcome with its comparison, subgroups (regimen among them) and explanations
    for key in ("checkpoint_inhibitor / objective_response", "tki_antiangiogenic / primary_resistance"):
        assert key in html
    assert ">regimen<" in html and ">child_pugh_class<" in html and ">loris<" in html and ">oracle<" in html
    assert "log-odds before calibration (whole model)" in html
    additivity = [float(x) for x in
                  re.findall(r"largest error over the explained patients: <strong>([0-9.e+-]+)</strong>", html)]
    assert len(additivity) == 4 and max(additivity) <= 1e-6
    # the terms a clinician reads, by importance, labelled as the page labels them
    terms = re.findall(r'<table class="terms">(.*?)</table>', html, flags=re.S)
    assert len(terms) == 4 and all("<td>Regimen</td>" in t for t in terms)
    assert not [t for t in terms if re.search(r"<td>(regimen|target|class)_", t)]
    # the TRIPOD+AI checklist: 27 items, each answered somewhere or said to be not applicable
    rows = re.findall(r"<tr><td>(\d+)</td><td>.*?</td><td>.*?</td>\s*<td>(.*?)</td></tr>", html, flags=re.S)
    assert [int(n) for n, _ in rows] == list(range(1, 28))
    assert all(cell.startswith("not applicable: ") or '<a href="#' in cell for _, cell in rows)
    assert "BMJ 2024" in html


def test_materially_worse_rule():
    rule = load_yaml("report.yaml")["materially_worse"]
    table = pd.DataFrame([
        {"subgroup": "sex", "level": "female", "n": 400, "events": 100, "auc": 0.60, "calibration_slope": 1.0},
        {"subgroup": "sex", "level": "male", "n": 400, "events": 100, "auc": 0.75, "calibration_slope": 1.0},
        {"subgroup": "age_band", "level": ">=75", "n": 300, "events": 80, "auc": 0.74, "calibration_slope": 0.5},
        {"subgroup": "aetiology", "level": "other", "n": 30, "events": 5, "auc": 0.40, "calibration_slope": 0.1},
    ])
    flags = flag_subgroups(table, overall_auc=0.72, rule=rule, overall_slope=1.0).set_index("level")["flag"]
    assert flags["female"].startswith("MATERIALLY WORSE: AUC upper bound")
    assert flags["male"] == ""
    assert "calibration slope 0.50" in flags[">=75"]
    assert flags["other"] == "too small to judge"
    # a model miscalibrated everywhere: the subgroup is no worse than overall
    assert flag_subgroups(table, 0.72, rule, overall_slope=0.55).set_index("level").loc[">=75", "flag"] == ""


def test_endpoint_roles_and_cache(store, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from response_model import report
    from response_model.service.app import create_app
    from response_model.service.keys import KeyStore

    url = f"sqlite:///{tmp_path}/service.db"
    with KeyStore(url) as keys:
        tokens = {role: keys.create(role, f"test {role}").token for role in ("clinician", "auditor", "admin")}
    calls = []
    original = report.build_report

    def counted(uri):
        calls.append(uri)
        return original(uri)

    monkeypatch.setattr(report, "build_report", counted)
    with TestClient(create_app(store["model_uri"], url)) as client:
        assert client.get("/v1/model/report").status_code == 401
        clinician = {"Authorization": f"Bearer {tokens['clinician']}"}
        assert client.get("/v1/model/report", headers=clinician).status_code == 403
        pages = []
        for role in ("auditor", "admin"):
            response = client.get("/v1/model/report", headers={"Authorization": f"Bearer {tokens[role]}"})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/html")
            assert_policy_fits(response.headers["content-security-policy"], response.text)
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
            pages.append(response.text)
    assert "<h2>TRIPOD+AI checklist</h2>" in pages[0] and "research use — trained on simulated data" in pages[0]
    assert pages[0] == pages[1] and calls == [store["model_uri"]]   # rendered once per loaded model


def assert_policy_fits(header: str, html: str) -> None:
    """The report's Content-Security-Policy is strict (no script, nothing fetched, never framed) and fits the
    page: its style sheets allowed by hash, its images embedded, no script, no style attribute."""
    policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert policy["default-src"] == "'none'" and policy["img-src"] == "data:" and policy["frame-ancestors"] == "'none'"
    assert "script-src" not in policy and "unsafe" not in policy["style-src"]
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert styles
    for style in styles:
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["style-src"]
    images = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in html and " style=" not in html


def test_chromium_renders_every_section_and_figure(written):
    chromium = require_service("RESPONSE_MODEL_TEST_CHROMIUM", "Chromium")
    from playwright.sync_api import sync_playwright

    path, html = written
    expected_images = len(re.findall(r"<img\s", html))
    assert expected_images >= 4 * 4   # per model: calibration, beeswarm, ROC, at least one dependence plot
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page.goto(path.as_uri())
            assert page.locator("#research-label").is_visible()
            for section, heading in SECTIONS:
                title = page.locator(f"section#{section} > h2")
                assert title.inner_text() == heading and title.is_visible()
            images = page.locator("img")
            assert images.count() == expected_images
            for i in range(images.count()):
                image = images.nth(i)
                image.scroll_into_view_if_needed()
                assert image.is_visible(), image.get_attribute("alt")
                assert image.evaluate("img => img.complete && img.naturalWidth > 0"), image.get_attribute("alt")
        finally:
            context.close()
