"""Locating and reading the YAML configuration under ``configs/``."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from response_model.errors import ConfigError

CONFIG_DIR_ENV = "RESPONSE_MODEL_CONFIG_DIR"


def config_dir() -> Path:
    """Return the folder holding the project's YAML configuration.

    ``$RESPONSE_MODEL_CONFIG_DIR`` wins; otherwise the ``configs/`` folder of the source checkout
    (the package is installed in editable mode from it).
    """
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    return _checkout_config_dir()


@lru_cache(maxsize=1)
def _checkout_config_dir() -> Path:
    # cached: parsing a cohort reads configuration once per row, and this walk stats the file system
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "configs"
        if (candidate / "regimens.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"cannot find the configs/ folder; set {CONFIG_DIR_ENV} to the folder holding regimens.yaml"
    )


def resolve_config_path(name: str | os.PathLike[str]) -> Path:
    """Return ``name`` as a path: as given if it exists, else under :func:`config_dir`.

    ``configs/sources/x.yaml`` and ``sources/x.yaml`` both work from any working directory.
    """
    path = Path(name)
    if path.exists():
        return path
    for candidate in (config_dir() / path, config_dir().parent / path):
        if candidate.exists():
            return candidate
    raise ConfigFileNotFoundError(f"configuration file {str(name)!r} not found (also looked in {config_dir()})")


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A configuration file that is neither at the path given nor under ``configs/``."""


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> Any:
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(_yaml_message(path, error)) from None


def _yaml_message(path: str, error: yaml.YAMLError) -> str:
    """Return one line naming the file, the line and column (1-based) and what YAML expected there."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else path
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"{where}: malformed YAML: {problem}" + (f" ({context})" if context else "") + \
        "; fix the file (indentation, a missing ':' or closing bracket, an unquoted ':' in a value)"


def load_yaml(name: str | os.PathLike[str]) -> Any:
    """Return the parsed content of a YAML file, by path or by name under ``configs/``.

    Re-read when the file changes (its modification time is part of the cache key)."""
    try:
        path = _resolved(str(name), os.getcwd(), os.environ.get(CONFIG_DIR_ENV))
        mtime = os.stat(path).st_mtime
    except OSError:  # moved or deleted since it was found: look again (and say so if it is gone)
        _resolved.cache_clear()
        path = str(resolve_config_path(name).resolve())
        mtime = os.stat(path).st_mtime
    return _load_cached(path, mtime)


@lru_cache(maxsize=256)
def _resolved(name: str, cwd: str, config_dir_env: str | None) -> str:
    # cached: per-row checks of a cohort read configuration thousands of times
    return str(resolve_config_path(name).resolve())
