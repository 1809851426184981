"""Loading a bundle (registry alias or version, run, exported folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from response_model.modeling.bundle import ResponseModelBundle


def load_model(uri: str | Path) -> mlflow.pyfunc.PyFuncModel:
    """Load a bundle from ``models:/NAME@champion``, ``models:/NAME/V``, ``runs:/ID/bundle`` or a folder.

    Returns the pyfunc model; :func:`as_bundle` gives the :class:`ResponseModelBundle` inside, whose
    ``metadata`` then names the registered model and version (when known: registry URIs, and
    folders written by :func:`response_model.modeling.registry.export`).
    """
    from response_model.modeling.registry import resolve_version

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
