"""Model registry: register a logged bundle, promote it to ``champion`` through a gate, evaluate, export.

Metric names on runs follow :func:`response_model.tracking.metric_key`:
``<response|resistance>.<regimen_class>.<metric>`` (e.g. ``response.checkpoint_inhibitor.auc_lower``).
A gate names metrics either fully (``response.checkpoint_inhibitor.auc_lower``) or by their last
part (``auc_lower``: every outcome × regimen class the run logged must pass).

Gate values: a number is a floor for higher-is-better metrics and a ceiling for lower-is-better
ones (:data:`LOWER_IS_BETTER`); ``[low, high]`` is an interval; ``{"min": …, "max": …}`` is explicit.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from response_model.errors import ModelNotFoundError
from response_model.modeling.bundle import ARTIFACT_NAME
from response_model.modeling.metrics import held_out_details, held_out_metrics
from response_model.modeling.predict import as_bundle, load_model, parse_model_uri, resolve_version
from response_model.schema import OUTCOMES

CHAMPION = "champion"
LOWER_IS_BETTER = frozenset({"brier", "ece", "log_loss"})
#: Metrics whose ideal is a value, not an extreme: closer is better.
TARGET_VALUE = {"calibration_slope": 1.0, "calibration_intercept": 0.0, "calibration_in_the_large": 0.0}
_RUN_METRIC = re.compile(r"^(response|resistance)\.[^.]+\.(?P<metric>[^.]+)$")


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def register(run_id: str, name: str, artifact_path: str = ARTIFACT_NAME) -> str:
    """Register the bundle logged by run ``run_id`` (under ``artifact_path``) as a new version of ``name``;
    return it."""
    # MLflow 3 keeps a logged model's files with the LoggedModel, not under the run's artifacts;
    # register_model resolves runs:/ID/NAME to that model (and keeps the run id on the version)
    # but logs a warning saying so, which is expected here and only alarms CLI users.
    resolver_log = logging.getLogger("mlflow.tracking._model_registry.fluent")
    level = resolver_log.level
    resolver_log.setLevel(logging.ERROR)
    try:
        version = mlflow.register_model(f"runs:/{run_id}/{artifact_path}", name)
    finally:
        resolver_log.setLevel(level)
    return str(version.version)


FIRST_MODEL_HINT = "run `make run`, or `response-model train` then `response-model promote`"
URI_FORMS = ("models:/NAME@champion, models:/NAME/VERSION, runs:/RUN_ID/bundle or a folder written by "
             "`response-model export`")


def _not_found(error: MlflowException) -> bool:
    return getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _require_registered(model_uri: str, client: MlflowClient) -> None:
    name, version, alias = parse_model_uri(model_uri)
    store = mlflow.get_registry_uri()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if not _not_found(error):
            raise
        raise ModelNotFoundError(f"{model_uri}: no model named {name!r} is registered in the MLflow store {store}; "
                                 f"{FIRST_MODEL_HINT}") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    listed = ", ".join(map(str, versions)) or "none"
    if alias is not None and alias not in dict(registered.aliases or {}):
        newest = versions[-1] if versions else "N"
        raise ModelNotFoundError(
            f"{model_uri}: {name} has no version with the alias {alias!r} (registered versions: {listed}); "
            f"promote one with `response-model promote --name {name} --version {newest}`, or name a version "
            f"(models:/{name}/{newest})")
    if alias is None and version is not None and version.isdigit() and int(version) not in versions:
        raise ModelNotFoundError(f"{model_uri}: {name} has no version {version} (registered versions: {listed}); "
                                 f"name one of those, or {FIRST_MODEL_HINT}")


def require_model(model_uri: str | Path) -> None:
    """Raise :class:`ModelNotFoundError`, saying what exists and what to do, when ``model_uri`` names no model:
    a registered name, version or alias that does not exist, or a folder without an MLmodel file.

    Other URIs (``runs:/``, remote stores) are left to MLflow; an unreachable store raises MLflow's error."""
    text = str(model_uri)
    if text.startswith("models:/"):
        name, version, _ = parse_model_uri(text)
        if version is not None and not version.isdigit():
            return  # models:/<model_id>: a LoggedModel, not a registered version
        _require_registered(text, MlflowClient())
    elif "://" not in text and not text.startswith(("runs:/", "models:/")):
        folder = Path(text)
        if not folder.exists():
            raise ModelNotFoundError(f"{text}: no such model folder; expected {URI_FORMS}")
        if folder.is_dir() and not (folder / "MLmodel").is_file():
            raise ModelNotFoundError(f"{text}: not a model folder (no MLmodel file); expected {URI_FORMS}")


# ---------------------------------------------------------------------------------------------
# Promotion
# ---------------------------------------------------------------------------------------------


@dataclass
class PromotionDecision:
    """Whether ``version`` of ``name`` became champion, and why (every check, passed or failed)."""

    name: str
    version: str
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    previous_champion: str | None = None

    def __str__(self) -> str:
        verdict = "promoted to champion" if self.promoted else "refused"
        return f"{self.name} version {self.version} {verdict}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "promoted": self.promoted,
                "reasons": list(self.reasons), "previous_champion": self.previous_champion}


def _short(metric: str) -> str:
    match = _RUN_METRIC.match(metric)
    return match.group("metric") if match else metric.rsplit(".", 1)[-1]


def _matching(metrics: Mapping[str, float], key: str) -> dict[str, float]:
    """Return the run metrics a gate/evaluation key names (exact name, or by last part)."""
    if key in metrics:
        return {key: metrics[key]}
    return {name: value for name, value in metrics.items()
            if (m := _RUN_METRIC.match(name)) is not None and m.group("metric") == key}


def _bounds(metric: str, rule: Any) -> tuple[float | None, float | None]:
    if isinstance(rule, Mapping):
        return rule.get("min"), rule.get("max")
    if isinstance(rule, Sequence) and not isinstance(rule, str):
        low, high = rule
        return low, high
    value = float(rule)
    return (None, value) if _short(metric) in LOWER_IS_BETTER else (value, None)


def check_gate(metrics: Mapping[str, float], gate: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Return (passed, reasons) of ``metrics`` against ``gate``; a metric the run lacks fails."""
    passed, reasons = True, []
    for key, rule in gate.items():
        if key in ("per_regimen", MONITORING_GATE):  # per_regimen_reasons, monitoring_reasons
            continue
        found = _matching(metrics, key)
        if not found:
            passed = False
            reasons.append(f"gate: metric {key!r} was not logged by the candidate run")
            continue
        for metric, value in sorted(found.items()):
            low, high = _bounds(metric, rule)
            ok = not math.isnan(value) and (low is None or value >= low) and (high is None or value <= high)
            wanted = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                      else f"≥ {low:g}" if low is not None else f"≤ {high:g}")
            reasons.append(f"gate: {metric} = {value:.4g} {'passes' if ok else 'fails'} ({wanted})")
            passed &= ok
    return passed, reasons


def _worse(metric: str, candidate: float, champion: float, tolerance: float) -> bool:
    """True when ``candidate`` is worse than ``champion`` by more than ``tolerance``."""
    short = _short(metric)
    if math.isnan(candidate):
        return not math.isnan(champion)
    if math.isnan(champion):
        return False
    if short in TARGET_VALUE:
        target = TARGET_VALUE[short]
        return abs(candidate - target) > abs(champion - target) + tolerance
    if short in LOWER_IS_BETTER:
        return candidate > champion + tolerance
    return candidate < champion - tolerance


def _flatten_evaluation(result: Mapping[str, Any]) -> dict[str, float]:
    """Return an :func:`evaluate` result as {"response.auc": …, "resistance.c_index": …}."""
    flat = {}
    for outcome in ("response", "resistance"):
        for metric, value in (result.get(outcome) or {}).items():
            flat[f"{outcome}.{metric}"] = math.nan if value is None else float(value)
    return flat


def compare_with_champion(
    candidate: Mapping[str, float], champion: Mapping[str, float], metrics: Sequence[str], tolerance: float = 0.0
) -> tuple[bool, list[str]]:
    """Return (not_worse, reasons) comparing the same named metrics of candidate and champion."""
    not_worse, reasons = True, []
    for key in metrics:
        cand, champ = _matching(candidate, key), _matching(champion, key)
        shared = sorted(set(cand) & set(champ))
        if not shared:
            reasons.append(f"compare: {key!r} not available for both candidate and champion; not compared")
            continue
        for metric in shared:
            worse = _worse(metric, cand[metric], champ[metric], tolerance)
            reasons.append(
                f"compare: {metric} candidate {cand[metric]:.4g} vs champion {champ[metric]:.4g} "
                f"({'worse' if worse else 'not worse'})"
            )
            not_worse &= not worse
    return not_worse, reasons


def per_regimen_reasons(tags: Mapping[str, str], per_regimen: Mapping[str, Any] | None) -> tuple[bool, list[str]]:
    """(consistent, reasons) of the gate's per-regimen part against the candidate run's tags.

    The per-regimen decisions (withhold / warn) were made at training and are stored in the bundle, so
    promotion does not re-decide them: it reports them, and refuses a candidate trained under a different
    ``gate.per_regimen`` (or before per-regimen validation existed), whose bundle would not follow this gate."""
    if not per_regimen:
        return True, []
    recorded = tags.get("regimen_validation.gate")
    if recorded is None:
        return False, ["per-regimen gate: the candidate's run recorded no per-regimen validation; retrain it"]
    wanted = json.dumps(dict(per_regimen), sort_keys=True, default=str)
    if recorded != wanted:
        return False, [f"per-regimen gate: the candidate was trained under gate.per_regimen {recorded}, this gate is "
                       f"{wanted}; retrain so that the bundle's per-regimen decisions follow this gate"]
    reasons = []
    for key, words in (("withheld", "withheld (not served)"), ("warned", "served with a warning")):
        names = [n for n in tags.get(f"regimen_validation.{key}", "").split(",") if n]
        listed = f": {', '.join(names)}" if names else ""
        reasons.append(f"per-regimen gate: {len(names)} regimen(s) {words}{listed}")
    return True, reasons


MONITORING_GATE = "block_on_monitoring_act"
#: the tags `response-model monitor` sets on the served model's run (response_model.monitoring.commands)
MONITORING_TAGS = ("monitoring.verdict", "monitoring.act_checks", "monitoring.time")


def monitoring_reasons(client: MlflowClient, name: str, champion: str | None) -> tuple[bool, list[str]]:
    """(passed, reasons) of the gate item ``block_on_monitoring_act``: refused while the champion's
    last monitoring verdict (its run's ``monitoring.verdict`` tag) is ``act`` — the population it serves
    has shifted, and a model trained or validated on it is not promoted until the shift is reviewed
    and ``response-model monitor`` says otherwise."""
    if champion is None:
        return True, ["monitoring gate: no current champion"]
    run_id = client.get_model_version(name, champion).run_id
    tags = dict(client.get_run(run_id).data.tags) if run_id else {}
    verdict = tags.get(MONITORING_TAGS[0])
    if verdict != "act":
        return True, [f"monitoring gate: champion version {champion}'s last verdict is {verdict or 'not recorded'}"]
    return False, [f"monitoring gate: champion version {champion}'s monitoring says act "
                   f"({tags.get(MONITORING_TAGS[1], '?')}, {tags.get(MONITORING_TAGS[2], '?')}): review the "
                   "shift, then run `response-model monitor` again before promoting"]


def _run_metrics(client: MlflowClient, name: str, version: str) -> tuple[str | None, dict[str, float]]:
    model_version = client.get_model_version(name, version)
    if not model_version.run_id:
        return None, {}
    return model_version.run_id, dict(client.get_run(model_version.run_id).data.metrics)


def promote(
    name: str,
    version: str | int,
    gate: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
) -> PromotionDecision:
    """Move alias ``champion`` of ``name`` to ``version`` only if it passes ``gate`` and is not worse
    than the current champion; record the decision and its reasons as model-version tags.

    ``gate``: {metric: rule}, checked on the metrics the candidate's run logged.
    ``evaluation`` (the comparison with the champion):

    * None — compare the gate's metrics as logged by the candidate's and the champion's runs;
    * ``{"metrics": [names], "tolerance": 0.0}`` — compare those run metrics;
    * ``{"candidate": evaluate(...), "champion": evaluate(...), "tolerance": 0.0}`` — compare two
      :func:`evaluate` results of both models on the same held-out cohort (every metric they share).
    """
    client = MlflowClient()
    version = str(version)
    require_model(f"models:/{name}/{version}")
    evaluation = dict(evaluation or {})
    run_id, candidate_metrics = _run_metrics(client, name, version)
    passed, reasons = check_gate(candidate_metrics, gate)
    tags = dict(client.get_run(run_id).data.tags) if run_id else {}
    consistent, found_per_regimen = per_regimen_reasons(tags, gate.get("per_regimen"))
    passed &= consistent
    reasons += found_per_regimen
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        previous = None
    if gate.get(MONITORING_GATE):
        quiet, found_monitoring = monitoring_reasons(client, name, previous)
        passed &= quiet
        reasons += found_monitoring
    not_worse, found = _compare_with_current(client, name, version, previous, candidate_metrics, gate, evaluation)
    reasons += found
    promoted = bool(passed and not_worse)
    if not passed:
        reasons.insert(0, "refused: the candidate fails the gate")
    elif not not_worse:
        reasons.insert(0, f"refused: the candidate is worse than champion version {previous}")
    if promoted and str(previous) != version:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = PromotionDecision(name, version, promoted, reasons, None if previous is None else str(previous))
    _tag_decision(client, decision, gate)
    return decision


def _compare_with_current(client: MlflowClient, name: str, version: str, previous: str | None,
                          candidate_metrics: Mapping[str, float], gate: Mapping[str, Any],
                          evaluation: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(not worse than the current champion, the reasons) as :func:`promote`'s ``evaluation`` asks."""
    tolerance = float(evaluation.get("tolerance", 0.0))
    if previous is None:
        return True, ["compare: no current champion"]
    if str(previous) == version:
        return True, [f"compare: version {version} is already the champion"]
    if "candidate" in evaluation and "champion" in evaluation:
        cand, champ = _flatten_evaluation(evaluation["candidate"]), _flatten_evaluation(evaluation["champion"])
        not_worse, found = compare_with_champion(cand, champ, sorted(set(cand) & set(champ)), tolerance)
        return not_worse, [f"{r} [held-out evaluation, champion version {previous}]" for r in found]
    _, champion_metrics = _run_metrics(client, name, str(previous))
    names = list(evaluation.get("metrics") or [k for k in gate if k not in ("per_regimen", MONITORING_GATE)])
    not_worse, found = compare_with_champion(candidate_metrics, champion_metrics, names, tolerance)
    return not_worse, [f"{r} [champion version {previous}]" for r in found]


def _tag_decision(client: MlflowClient, decision: PromotionDecision, gate: Mapping[str, Any]) -> None:
    """Record ``decision`` and its reasons as tags of the candidate model version."""
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "refused",
        "promotion.reasons": json.dumps(decision.reasons)[:5000],
        "promotion.gate": json.dumps(dict(gate), default=str)[:5000],
        "promotion.previous_champion": decision.previous_champion or "",
        "promotion.time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)


# ---------------------------------------------------------------------------------------------
# Evaluation on a labelled cohort the model never saw
# ---------------------------------------------------------------------------------------------


def evaluate(model_uri: Any, parsed_cohort: Any) -> dict[str, Any]:
    """Score a labelled cohort under each patient's given regimen; return the JSON-ready result.

    ``{"n": patients scored, "response": {"auc", "auprc", "brier", "calibration_slope"} | None,
    "resistance": {"auc", "auprc", "brier", "calibration_slope", "c_index"} | None}``; an outcome the
    cohort cannot label (no labels, or one class only) is None. ``model_uri``: any URI or folder
    :func:`response_model.modeling.predict.load_model` accepts, or an already loaded model.
    ``parsed_cohort``: a :class:`~response_model.dataset.ParsedCohort` (or a ``LoadedCohort``).
    """
    return _evaluated(model_uri, parsed_cohort)[0]


def evaluation_report(model_uri: Any, parsed_cohort: Any) -> dict[str, Any]:
    """:func:`evaluate`'s result followed by the keys of
    :func:`~response_model.modeling.metrics.held_out_details` (labelled n and events, 95 % bootstrap
    intervals, the same per regimen class), from one scoring of the cohort: what ``evaluate`` prints."""
    result, outcomes, classes = _evaluated(model_uri, parsed_cohort)
    return {**result, **held_out_details(outcomes, classes)}


def _evaluated(model_uri: Any, parsed_cohort: Any) -> tuple[dict[str, Any], dict[str, tuple], list[str]]:
    """(:func:`evaluate`'s result, {"response": (y, p), "resistance": (y, p, pfs_months, pfs_event)},
    each scored patient's regimen class)."""
    parsed = getattr(parsed_cohort, "parsed", parsed_cohort)
    if isinstance(model_uri, (str, Path)):
        require_model(model_uri)
    model = load_model(model_uri) if isinstance(model_uri, (str, Path)) else model_uri
    predictor = as_bundle(model).predictor()
    scorable = {r.name for r in predictor.catalogue.values() if r.regimen_class in predictor.regimen_classes}
    pairs = [(rec, out) for rec, out in zip(parsed.records, parsed.outcomes) if out.regimen in scorable]
    unrecorded = [(rec, out) for rec, out in zip(parsed.records, parsed.outcomes) if out.regimen is None]
    mixed, note = _unrecorded_regimen(predictor, [rec for rec, _ in unrecorded])
    if mixed is not None:
        pairs += unrecorded
    result: dict[str, Any] = {"n": len(pairs), "response": None, "resistance": None, **note}
    if not pairs:
        return result, {"response": ([], []), "resistance": ([], [], [], [])}, []
    given = pairs[:len(pairs) - len(unrecorded)] if mixed is not None else pairs
    p_response = p_resistance = np.empty(0)
    scored_classes: list[str] = []
    if given:
        predictions = predictor.predict([rec for rec, _ in given], [[out.regimen] for _, out in given])
        p_response, p_resistance = (predictions.probability[o] for o in OUTCOMES)
        scored_classes = list(predictions.regimen_class)
    if mixed is not None:
        p_response, p_resistance = (np.concatenate([p, mixed.probability[o]])
                                    for p, o in ((p_response, OUTCOMES[0]), (p_resistance, OUTCOMES[1])))
        scored_classes += [mixed.regimen_class] * len(unrecorded)
    column = {name: np.array([math.nan if getattr(out, name) is None else float(getattr(out, name))
                              for _, out in pairs])
              for name in ("objective_response", "primary_resistance", "pfs_months", "pfs_event")}
    result["response"] = held_out_metrics(column["objective_response"], p_response)
    result["resistance"] = held_out_metrics(column["primary_resistance"], p_resistance,
                                            column["pfs_months"], column["pfs_event"])
    outcomes = {"response": (column["objective_response"], p_response),
                "resistance": (column["primary_resistance"], p_resistance, column["pfs_months"], column["pfs_event"])}
    return result, outcomes, scored_classes


def _unrecorded_regimen(predictor: Any, records: list) -> tuple[Any, dict[str, Any]]:
    """(the estimates of patients without a recorded regimen under the training mix, or None; the key
    ``regimen_unrecorded`` of ``evaluate``'s result saying how they were scored, or why not)."""
    from response_model.modeling.unknown_regimen import mixture_weights, only_class, predict_unknown_regimen

    if not records:
        return None, {}
    regimen_class = only_class(predictor)
    if regimen_class is None:
        return None, {"regimen_unrecorded": {
            "n": len(records), "scored": False,
            "note": f"not scored: the model has several regimen classes ({', '.join(predictor.regimen_classes)}) "
                    "and these patients' regimen (hence class) is not recorded; expected a regimen per patient"}}
    try:
        weights = mixture_weights(predictor.metadata, regimen_class)
    except ValueError as error:
        return None, {"regimen_unrecorded": {"n": len(records), "scored": False, "note": f"not scored: {error}"}}
    mixed = predict_unknown_regimen(predictor, records, regimen_class)
    return mixed, {"regimen_unrecorded": {"n": len(records), "scored": True, "regimen_class": regimen_class,
                                          "weights": {k: round(v, 4) for k, v in weights.items()},
                                          "note": mixed.warning}}


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def default_export_dir(model_uri: str, root: str | Path = "models") -> Path:
    """Return ``models/NAME-vN`` for a registry URI (aliases resolved)."""
    resolved = resolve_version(model_uri)
    if resolved is None:
        raise ValueError(f"{model_uri!r}: give --out for a URI that is not a registered model version")
    name, version = resolved
    return Path(root) / f"{name}-v{version}"


def export(model_uri: str, out_dir: str | Path) -> Path:
    """Copy the pyfunc folder of ``model_uri`` to ``out_dir`` (new or empty); return it.

    The folder is self-contained (MLmodel, pickled bundle, requirements); it loads with
    ``mlflow.pyfunc.load_model(out_dir)`` without any tracking server. The registered name and
    version (when the URI is a registry URI) are written into the MLmodel metadata.
    """
    from mlflow.models import Model

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; expected a new folder")
    require_model(model_uri)
    resolved = resolve_version(model_uri)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        if not (local / "MLmodel").is_file():
            raise ValueError(f"{model_uri!r} is not an MLflow model (no MLmodel file)")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.copytree(local, out)
    model = Model.load(str(out / "MLmodel"))
    model.metadata = dict(model.metadata or {})
    model.metadata["exported_from"] = model_uri
    if resolved is not None:
        model.metadata["model_name"], model.metadata["model_version"] = resolved
    model.save(str(out / "MLmodel"))
    return out
