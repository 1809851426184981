"""The API, batch scoring, ``evaluate`` and the pyfunc give the numbers they gave before the prediction
core was rewritten (``tests/data/golden_answers.json.gz``; see ``tests/golden_answers.py``)."""

from __future__ import annotations

import pytest

from golden_answers import GOLDEN, PSEUDONYM_KEY, answers, differences, saved


@pytest.mark.slow
def test_every_way_of_scoring_gives_the_saved_answers(smoke_model, tmp_path, monkeypatch):
    from response_model.privacy import PSEUDONYM_KEY_ENV

    monkeypatch.chdir(GOLDEN.parent.parent.parent)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
    expected = saved()
    found = differences(expected, answers(smoke_model["export_dir"], tmp_path))
    assert not found, f"{len(found)} difference(s), first: " + "; ".join(found[:10])


def test_the_comparison_can_fail():
    assert differences({"a": [1.0, {"b": "x"}]}, {"a": [1.000001, {"b": "y"}]}) == [
        ".a[0]: expected 1.0, got 1.000001", ".a[1].b: expected 'x', got 'y'"]
    assert differences({"a": 1}, {"b": 1}) == [".a: missing"]
    assert differences({"a": [1]}, {"a": [1, 2]}) == [".a: expected a list of 1, got [1, 2]"]
    assert differences({"a": 1}, {"a": 1 + 1e-12, "b": 2}) == []
