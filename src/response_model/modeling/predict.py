"""Loading a bundle: from a registry alias or version, a run or an exported folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from response_model.modeling.bundle import ResponseModelBundle


def load_model(uri: str | Path) -> mlflow.pyfunc.PyFuncModel:
    """Load a bundle from ``models:/NAME@champion``, ``models:/NAME/V``, ``runs:/ID/bundle`` or a folder.

    Returns the pyfunc model; :func:`as_bundle` gives the :class:`ResponseModelBundle` inside, whose
    ``metadata`` then names the registered model and version (when known: registry URIs, and
    folders written by :func:`response_model.modeling.registry.export`).
    """
    text = str(uri)
    is_folder = Path(text).is_dir() and "://" not in text and not text.startswith("models:/")
    model = mlflow.pyfunc.load_model(str(Path(text).resolve()) if is_folder else text)
    bundle = as_bundle(model)
    stored = dict(model.metadata.metadata or {}) if model.metadata is not None else {}
    name, version = stored.get("model_name"), stored.get("model_version")
    if not is_folder:
        resolved = resolve_version(text)
        if resolved is not None:
            name, version = resolved
    bundle.metadata["model_name"] = name
    bundle.metadata["model_version"] = None if version is None else str(version)
    bundle.metadata["model_uri"] = text
    return model


def as_bundle(model: Any) -> ResponseModelBundle:
    """Return the :class:`ResponseModelBundle` of a loaded pyfunc model (or the bundle itself)."""
    if isinstance(model, ResponseModelBundle):
        return model
    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    if not isinstance(inner, ResponseModelBundle):
        raise TypeError(f"{type(model).__name__} does not hold a ResponseModelBundle")
    return inner


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """Return (name, version, alias) of a ``models:/NAME/V`` or ``models:/NAME@alias`` URI."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r} is not a registry URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    rest = model_uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    name, _, version = rest.rpartition("/")
    if not name:
        raise ValueError(f"{model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, version, None


def resolve_version(model_uri: str, client: MlflowClient | None = None) -> tuple[str, str] | None:
    """Return (name, version) of a registry URI (aliases resolved), or None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    name, version, alias = parse_model_uri(model_uri)
    if alias is not None:
        version = (client or MlflowClient()).get_model_version_by_alias(name, alias).version
    if version is None or not str(version).isdigit():
        return None  # models:/<model_id> (a LoggedModel, not a registered version)
    return name, str(version)
