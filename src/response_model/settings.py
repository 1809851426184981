"""Schemas of the YAML configuration files a user writes: training configs and source configs.

Every model forbids unknown keys, so a misspelt key (``n_repeat``, ``enable``, ``registerd_model``)
is refused, naming the file, the key's path and the nearest valid key, instead of being silently
ignored. :func:`load_training_config` and :func:`load_source_config` read a file, check it and
return the mapping as written (the consumers read the keys they always read, with the same meaning).

The table source's schema (column mappings, gene columns, constants) is
:class:`response_model.sources.tables.TableSourceConfig`, next to the code that uses it.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from response_model.config import load_yaml, resolve_config_path
from response_model.errors import ConfigError

OUTCOMES = ("objective_response", "primary_resistance")
#: Metrics the training logs per class × outcome (mean, and ``_lower`` / ``_upper`` of the fold interval).
SUMMARY_METRICS = ("auc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece", "c_index")


class Strict(BaseModel):
    """Base of every configuration model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Error messages: file, key path, nearest valid key
# ---------------------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """Return the model classes and containers an annotation may hold (Optional and unions opened)."""
    origin = get_origin(annotation)
    if origin is None or origin in (list, tuple, dict, Mapping):
        return [annotation]
    return [t for arg in get_args(annotation) for t in _unwrap(arg)]


def _keys_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Return the valid keys of the mapping at ``path`` inside ``model`` (empty when unknown)."""
    candidates: list[Any] = [model]
    for part in path:
        following: list[Any] = []
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                field = candidate.model_fields.get(str(part)) or next(
                    (f for f in candidate.model_fields.values() if f.alias == part), None)
                if field is not None:
                    following += _unwrap(field.annotation)
            elif get_origin(candidate) in (dict, Mapping):
                following += _unwrap(get_args(candidate)[1])
            elif get_origin(candidate) in (list, tuple) and isinstance(part, int):
                following += _unwrap(get_args(candidate)[0])
        candidates = following
    keys: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            keys += [f.alias or name for name, f in candidate.model_fields.items()]
            keys += list(getattr(candidate, "extra_keys", lambda: [])())
    return sorted(set(keys))


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _description(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """Return the description of the field at ``loc`` (for "required key missing" messages)."""
    parents: list[Any] = [model]
    for part in loc[:-1]:
        parents = [t for c in parents if _is_model(c) and (f := c.model_fields.get(str(part))) is not None
                   for t in _unwrap(f.annotation)]
    for parent in parents:
        if _is_model(parent) and (f := parent.model_fields.get(str(loc[-1]))) is not None:
            return f.description
    return None


def suggestion(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return `` (did you mean 'x'?)`` for the valid key nearest to ``key``, or an empty string."""
    by_lower = {str(name).lower(): name for name in valid}
    close = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


_TAGS = frozenset({"str", "int", "float", "bool"})


def describe_errors(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """Return one text per problem: ``key.path: what is wrong (did you mean …?)``."""
    texts = []
    for item in error.errors(include_url=False):
        # pydantic adds a union member's tag ('function-after[...]', 'float', 'tuple[...]') to the location: drop it
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and (p.endswith("]") or p in _TAGS)))
        kind = item["type"]
        if kind == "extra_forbidden":
            key, parent = loc[-1], loc[:-1]
            valid = _keys_at(model, parent)
            where = f"{_dotted(parent)}: " if parent else ""
            expected = f"; expected one of {', '.join(valid)}" if valid else ""
            texts.append(f"{where}unknown key(s) {key}{suggestion(str(key), valid)}{expected}")
        elif kind == "missing":
            hint = _description(model, loc)
            texts.append(f"{_dotted(loc)}: required key missing" + (f"; expected {hint}" if hint else ""))
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            shown = f" (got {value!r})" if kind not in ("value_error", "assertion_error") and \
                not isinstance(value, (dict, list)) else ""
            texts.append(f"{_dotted(loc) or 'top level'}: {message}{shown}")
    return texts


def check(data: Any, model: type[BaseModel], file: str | os.PathLike[str], what: str) -> BaseModel:
    """Return ``data`` validated as ``model``; raises ConfigError naming ``file`` and every key at fault."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: expected a {what} (a YAML mapping of keys), got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        problems = describe_errors(error, model)
        raise ConfigError(f"{file}: not a valid {what}: " + "; ".join(problems)) from None


# ---------------------------------------------------------------------------------------------
# Training configuration (configs/train/*.yaml)
# ---------------------------------------------------------------------------------------------


class Simulate(Strict):
    n: int = Field(gt=0, description="patients to simulate")
    seed: int


class Data(Strict):
    source: str = Field(description="source configuration the cohort file is read through")
    path: str | None = Field(None, description="cohort file or folder; null (or --data) → simulate")
    simulate: Simulate | None = None



class Outcome(Strict):
    enabled: bool = False
    c_index_against: Literal["pfs"] | None = Field(
        None, description="informational: the resistance c-index is always computed against PFS")


class Outcomes(Strict):
    objective_response: Outcome = Field(default_factory=Outcome)
    primary_resistance: Outcome = Field(default_factory=Outcome)


class CV(Strict):
    n_splits: int = Field(ge=2)
    n_repeats: int = Field(ge=1)
    seed: int
    n_jobs: int = Field(1, ge=1)


class Dask(Strict):
    lightgbm_dask_min_rows: int = Field(ge=1)


class Uncertainty(Strict):
    """The per-patient interval (response_model.modeling.uncertainty)."""

    enabled: bool = True
    level: float = Field(0.8, gt=0.0, lt=1.0, description="nominal coverage of the interval, e.g. 0.8")
    members: int = Field(8, ge=2, description="bootstrap refits of each final model")
    draws: int = Field(16, ge=2, description="draws of a record's missing fields per answer")
    scale_rows: int = Field(1000, ge=50, description="training rows per model used to estimate the spread's scale")


def _classifier_params() -> dict[str, inspect.Parameter]:
    from response_model.modeling.estimators import ResponseClassifier

    return dict(inspect.signature(ResponseClassifier.__init__).parameters)


def _check_params(params: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = [key for key in params if key not in allowed]
    if unknown:
        key = unknown[0]
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in {where}{suggestion(key, sorted(allowed))}; "
                         f"expected parameters of ResponseClassifier: {', '.join(sorted(allowed))}")


class Search(Strict):
    enabled: bool = False
    models: list[str] = Field(default_factory=lambda: ["project"])
    method: Literal["random", "grid"] = "random"
    n_iter: int = Field(8, ge=1)
    inner_splits: int = Field(3, ge=2)
    scoring: str = "neg_log_loss"
    space: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _known_parameters(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        _check_params(space, set(_classifier_params()) - {"self"}, "search.space")
        return space

    @model_validator(mode="after")
    def _space_when_enabled(self) -> Search:
        if self.enabled and not self.space:
            raise ValueError("search is enabled but search.space is empty; list candidate values per parameter")
        return self


class ModelSection(Strict):
    """``defaults`` (ResponseClassifier parameters) and per-regimen-class overrides (the same, plus
    ``monotone_constraints``, plus per-outcome overrides under ``objective_response`` /
    ``primary_resistance``). Keys other than ``defaults`` must be regimen classes of the catalogue."""

    model_config = ConfigDict(extra="allow", frozen=True)
    defaults: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def extra_keys(cls) -> list[str]:
        from response_model.regimens import load_catalogue

        return sorted({r.regimen_class for r in load_catalogue().values()})

    @model_validator(mode="after")
    def _known_keys(self) -> ModelSection:
        allowed = set(_classifier_params()) - {"self"}
        _check_params(self.defaults, allowed - {"monotone_constraints"}, "model.defaults")
        classes = self.extra_keys()
        for name, params in (self.model_extra or {}).items():
            if name not in classes:
                raise ValueError(f"unknown key(s) {name} in model{suggestion(name, ['defaults', *classes])}; "
                                 f"expected defaults or a regimen class ({', '.join(classes)})")
            if not isinstance(params, Mapping):
                raise ValueError(f"model.{name}: expected a mapping of ResponseClassifier parameters")
            for outcome in OUTCOMES:  # a class's per-outcome overrides
                overrides = params.get(outcome) or {}
                if not isinstance(overrides, Mapping):
                    raise ValueError(f"model.{name}.{outcome}: expected a mapping of ResponseClassifier parameters")
                _check_params(overrides, allowed - {"monotone_constraints"}, f"model.{name}.{outcome}")
            _check_params({k: v for k, v in params.items() if k not in OUTCOMES}, allowed,
                          f"model.{name}")
            constraints = params.get("monotone_constraints") or {}
            if not isinstance(constraints, Mapping) or any(v not in (-1, 0, 1) for v in constraints.values()):
                raise ValueError(f"model.{name}.monotone_constraints: expected {{feature: 1 | -1 | 0}}")
        return self


class Rule(Strict):
    feature: str
    threshold: float


#: baseline key → its class in response_model.modeling.baselines (the keys are its constructor's parameters)
BASELINE_CLASSES = {"logistic": "LogisticBaseline", "loris": "LorisRecipe", "loris_published": "PublishedLoris",
                    "rf16": "RF16Recipe"}


class Baselines(Strict):
    logistic: dict[str, Any] | None = None
    loris: dict[str, Any] | None = None
    loris_published: dict[str, Any] | None = Field(
        None, description="the published LORIS formula, not refitted: {score: loris_pan_cancer} "
                          "(configs/published_scores.yaml)")
    rf16: dict[str, Any] | None = Field(None, description="accepted; not fitted by `train` today (RF16Recipe exists)")
    rules: list[Rule] = Field(default_factory=list)
    oracle: bool = False

    @model_validator(mode="after")
    def _known_parameters(self) -> Baselines:
        from response_model.modeling import baselines

        for key, name in BASELINE_CLASSES.items():
            params = getattr(self, key) or {}
            allowed = set(inspect.signature(getattr(baselines, name).__init__).parameters) - {"self"}
            unknown = [k for k in params if k not in allowed]
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)} in baselines.{key}"
                                 f"{suggestion(unknown[0], sorted(allowed))}; expected parameters of {name}: "
                                 f"{', '.join(sorted(allowed))}")
        return self


GateRule = float | tuple[float, float] | dict[Literal["min", "max"], float]


class PerRegimenGate(Strict):
    """``gate.per_regimen``: rules on each regimen's out-of-fold metrics, checked at training
    (:mod:`response_model.modeling.regimen_validation`); a regimen failing one is withheld or served
    with a warning naming the metric (``on_fail``), as is one with too few patients (``on_too_few``)."""

    min_patients: int = Field(0, ge=0, description="labelled patients of the regimen below which it is "
                                                   "'not validated — too few patients'")
    min_events: int = Field(0, ge=0, description="patients in the rarer outcome class below which likewise")
    on_fail: Literal["withhold", "warn"] = Field("withhold", description="withhold | warn")
    on_too_few: Literal["withhold", "warn"] = Field("warn", description="withhold | warn")
    auc: GateRule | None = None
    auc_lower: GateRule | None = Field(None, description="lower 95 % bootstrap bound of the regimen's AUC")
    auc_upper: GateRule | None = None
    calibration_slope: GateRule | None = None
    calibration_slope_lower: GateRule | None = None
    calibration_slope_upper: GateRule | None = None
    calibration_intercept: GateRule | None = None
    calibration_intercept_lower: GateRule | None = None
    calibration_intercept_upper: GateRule | None = None
    calibration_in_the_large: GateRule | None = None
    calibration_in_the_large_lower: GateRule | None = None
    calibration_in_the_large_upper: GateRule | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PerRegimenGate:
        for name in self.model_fields_set:
            rule = getattr(self, name)
            if isinstance(rule, tuple) and rule[0] > rule[1]:
                raise ValueError(f"gate.per_regimen.{name}: [{rule[0]:g}, {rule[1]:g}] is empty; expected [low, high] "
                                 "with low ≤ high")
        return self


class Gate(Strict):
    """Promotion gate: ``{metric: rule}`` plus ``not_worse_than_champion``. A metric is named by its
    last part (``auc_lower``) or fully (``response.checkpoint_inhibitor.auc_lower``). ``per_regimen``:
    see :class:`PerRegimenGate`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    not_worse_than_champion: bool = True
    per_regimen: PerRegimenGate | None = None
    # refuse while the champion's last `response-model monitor` verdict is act (registry.monitoring_reasons)
    block_on_monitoring_act: bool = False

    @classmethod
    def extra_keys(cls) -> list[str]:
        return sorted({f"{m}{s}" for m in SUMMARY_METRICS for s in ("", "_lower", "_upper")})

    @model_validator(mode="after")
    def _known_metrics(self) -> Gate:
        from pydantic import TypeAdapter

        adapter = TypeAdapter(GateRule)
        known = self.extra_keys()
        for key, rule in (self.model_extra or {}).items():
            short = key.rsplit(".", 1)[-1]
            full = key.count(".") == 2 and key.split(".")[0] in ("response", "resistance")
            if short not in known or ("." in key and not full):
                hint = suggestion(short, [*known, "not_worse_than_champion", "per_regimen", "block_on_monitoring_act"])
                raise ValueError(f"unknown key(s) {key} in gate{hint}; "
                                 "expected a metric (auc_lower, calibration_slope, …) or "
                                 "<response|resistance>.<regimen_class>.<metric>")
            try:
                adapter.validate_python(rule)
            except ValidationError:
                raise ValueError(f"gate.{key}: {rule!r}; expected a number, [low, high] or {{min: …, max: …}}") \
                    from None
        return self


class TrainingConfig(Strict):
    """A training configuration (``configs/train/*.yaml``); see ``configs/train/default.yaml``."""

    name: str = "train"
    registered_model: str | None = None
    data: Data = Field(description="the training cohort: data: {source: configs/sources/canonical.yaml, "
                                   "path: FILE or null, simulate: {n: 5000, seed: 1}} (see configs/train/default.yaml)")
    regimen_classes: list[str] = Field(min_length=1)
    outcomes: Outcomes
    cv: CV
    dask: Dask | None = None
    search: Search = Field(default_factory=Search)
    model: ModelSection = Field(default_factory=ModelSection)
    baselines: Baselines = Field(default_factory=Baselines)
    subgroups: list[str] | None = Field(
        None, description="informational: the subgroups reported are those of metrics.subgroup_columns")
    gate: Gate | None = None
    uncertainty: Uncertainty = Field(default_factory=Uncertainty)

    @field_validator("regimen_classes")
    @classmethod
    def _known_classes(cls, names: list[str]) -> list[str]:
        classes = ModelSection.extra_keys()
        for name in names:
            if name not in classes:
                raise ValueError(f"{name!r} is not a regimen class{suggestion(name, classes)}; "
                                 f"expected some of {', '.join(classes)}")
        return names

    @model_validator(mode="after")
    def _some_outcome(self) -> TrainingConfig:
        if not (self.outcomes.objective_response.enabled or self.outcomes.primary_resistance.enabled):
            raise ValueError("outcomes: no outcome is enabled; set objective_response: {enabled: true} "
                             "and/or primary_resistance: {enabled: true}")
        return self


def load_training_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the training configuration at ``path`` (or under ``configs/``), checked against
    :class:`TrainingConfig`; raises ConfigError naming the file and the key at fault."""
    data = load_yaml(path)
    check(data, TrainingConfig, resolve_config_path(path), "training configuration")
    return data


def gate_of(config: Mapping[str, Any], file: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``gate`` section of a training configuration; raises ConfigError when it has none."""
    gate = config.get("gate")
    if not gate:
        raise ConfigError(f"{file}: no gate: section; `promote` needs one (e.g. gate: {{auc_lower: 0.6}})")
    return dict(gate)


# ---------------------------------------------------------------------------------------------
# Source configurations (configs/sources/*.yaml)
# ---------------------------------------------------------------------------------------------


class CanonicalSource(Strict):
    """``format: canonical``: a Parquet cohort written by this package (``simulate``, ``ingest``)."""

    format: Literal["canonical"]
    description: str | None = None


class Attribute(Strict):
    field: str
    values: dict[str, Any] | None = None


def _field_shorthand(entry: Any) -> Any:
    """``AGE: age`` is short for ``AGE: {field: age}``."""
    return {"field": entry} if isinstance(entry, str) else entry


class CBioPortalSource(Strict):
    """``format: cbioportal``: a study folder; attribute maps default to ``configs/sources/cbioportal.yaml``."""

    format: Literal["cbioportal"]
    description: str | None = None
    source: str | None = None
    pseudonymise: bool = False
    patient_attributes: dict[str, Annotated[Attribute, BeforeValidator(_field_shorthand)]] | None = None
    sample_attributes: dict[str, Annotated[Attribute, BeforeValidator(_field_shorthand)]] | None = None


SOURCE_FORMATS = ("table", "cbioportal", "canonical")


def source_model(data: Mapping[str, Any], file: str | os.PathLike[str]) -> type[BaseModel]:
    """Return the schema of a source configuration, chosen by its ``format``."""
    kind = data.get("format")
    if kind == "table":
        from response_model.sources.tables import TableSourceConfig

        return TableSourceConfig
    if kind == "cbioportal":
        return CBioPortalSource
    if kind == "canonical":
        return CanonicalSource
    if kind == "outcome_table":
        raise ConfigError(f"{file}: format 'outcome_table' maps a registry's outcome extract, not a cohort: "
                          "read it with `response-model outcomes import --source CONFIG FILE`")
    raise ConfigError(f"{file}: format {kind!r}{suggestion(str(kind), SOURCE_FORMATS)}; expected one of "
                      f"{', '.join(SOURCE_FORMATS)}")


def load_source_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the source configuration at ``path`` (or under ``configs/``), checked against its
    format's schema; raises ConfigError naming the file and the key at fault."""
    data = load_yaml(path)
    file = resolve_config_path(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: expected a source configuration (a YAML mapping with format:), "
                          f"got {type(data).__name__}")
    checked = check(data, source_model(data, file), file, "source configuration")
    if hasattr(checked, "to_spec"):  # a table source: also the checks that depend on the canonical fields
        from response_model.sources.tables import SourceSpecError

        try:
            checked.to_spec()
        except SourceSpecError as error:
            raise ConfigError(f"{file}: not a valid source configuration: {str(error).removeprefix('table spec: ')}") \
                from None
    return data
