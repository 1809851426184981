"""The model in service: one loaded bundle, the holder that swaps it, loading at start-up and the alias check.

:meth:`ModelHolder.load` loads a model fully and then swaps one reference, so requests in flight
finish on the model they started with. :func:`load_at_start` falls back to an exported model folder
(loudly labelled) when the registry model cannot be loaded; :func:`watch_alias` reloads when the
alias of a ``models:/NAME@ALIAS`` URI moves to another version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from response_model.config import load_yaml
from response_model.modeling.bundle import ResponseModelBundle
from response_model.modeling.predict import as_bundle, load_model

log = logging.getLogger(__name__)

MODEL_URI_ENV = "RESPONSE_MODEL_URI"
ALIAS_CHECK_ENV = "RESPONSE_MODEL_ALIAS_CHECK_SECONDS"
DEFAULT_ALIAS_CHECK_SECONDS = 60.0
FALLBACK_ENV = "RESPONSE_MODEL_FALLBACK_MODEL_DIR"
FALLBACK_VERSION_NOTE = "(FALLBACK: exported folder)"


@dataclass(frozen=True)
class LoadedModel:
    """One loaded bundle and what the responses say about it."""

    bundle: ResponseModelBundle
    uri: str
    name: str | None
    version: str | None
    #: why an exported fallback folder is serving instead of ``uri`` of the registry (None normally)
    fallback: str | None = None

    @classmethod
    def load(cls, uri: str) -> LoadedModel:
        """Return the model of ``uri``, loaded, with its predictor made (before the first request)."""
        model = load_model(uri)
        bundle = as_bundle(model)
        bundle.predictor()
        meta = bundle.metadata
        return cls(bundle, uri, meta.get("model_name"), meta.get("model_version"))

    def names(self) -> dict[str, str | None]:
        """Return the model's name, version and URI, as the probes and the reload answer show them."""
        return {"model_name": self.name, "model_version": self.version, "model_uri": self.uri}


class ModelHolder:
    """Holds the current model; :meth:`load` and :meth:`install` replace the reference atomically (one assignment)."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """Return the model in service, or None before the first load."""
        return self._current

    def require(self) -> LoadedModel:
        """Return the current model; raises HTTPException 503 while none is loaded."""
        model = self._current
        if model is None:
            raise HTTPException(503, "the model is not loaded yet")
        return model

    def load(self, uri: str) -> tuple[LoadedModel | None, LoadedModel]:
        """Load ``uri`` fully, then swap it in; returns (previous, new). Reloads are serialised."""
        with self._reload_lock:
            new = LoadedModel.load(uri)
            previous, self._current = self._current, new
            return previous, new

    def install(self, model: LoadedModel) -> None:
        """Put an already loaded ``model`` in service (the start-up fallback), serialised with reloads."""
        with self._reload_lock:
            self._current = model


def default_model_uri() -> str:
    """``$RESPONSE_MODEL_URI``, else ``models:/<registered_model of configs/train/default.yaml>@champion``."""
    uri = os.environ.get(MODEL_URI_ENV, "").strip()
    if uri:
        return uri
    name = load_yaml("train/default.yaml").get("registered_model", "hcc-response")
    return f"models:/{name}@champion"


def alias_check_seconds() -> float:
    """``$RESPONSE_MODEL_ALIAS_CHECK_SECONDS`` (default 60; 0 turns the periodic alias check off)."""
    text = os.environ.get(ALIAS_CHECK_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_ALIAS_CHECK_SECONDS
    except ValueError:
        raise ValueError(f"${ALIAS_CHECK_ENV}={text!r}: expected a number of seconds (0 = off)") from None


def check_alias(holder: ModelHolder, uri: str) -> bool:
    """Reload when the alias of ``uri`` (``models:/NAME@ALIAS``) now names another version; True if it did."""
    from response_model.modeling.registry import resolve_version

    current = holder.current
    resolved = resolve_version(uri)
    if resolved is None or current is None or resolved[1] == current.version:
        return False
    log.info("alias %s moved from version %s to %s; reloading", uri, current.version, resolved[1])
    holder.load(uri)
    return True


def is_alias_uri(uri: str) -> bool:
    """Return True for a registry URI naming an alias (``models:/NAME@ALIAS``), the kind the alias check follows."""
    return uri.startswith("models:/") and "@" in uri


async def watch_alias(holder: ModelHolder, uri: str, interval: float) -> None:
    """Run :func:`check_alias` every ``interval`` seconds until cancelled; never returns."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(check_alias, holder, uri)
        except Exception:  # noqa: BLE001 - keep serving the current model; try again later
            log.exception("alias check of %s failed; the current model stays in service", uri)


class ModelUnavailableError(RuntimeError):
    """Neither the model URI nor a fallback folder could be loaded at start-up: the service does not start."""


def _reason(error: BaseException) -> str:
    """Return the error's type and the first line of its message (at most 300 characters), for a log line."""
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def load_at_start(holder: ModelHolder, uri: str, fallback_dir: str | Path | None = None) -> LoadedModel:
    """Load ``uri`` into ``holder``; if that fails, load the exported model folder ``fallback_dir``.

    Returns the model in service. A fallback model says so loudly: a CRITICAL log line, its
    ``fallback`` reason (shown by ``/readyz`` and ``/v1/model``) and a version such as
    ``"3 (FALLBACK: exported folder)"`` in every answer and audit record. The periodic alias check
    (or ``POST /v1/admin/reload``) switches back to ``uri`` once the registry answers again.
    Raises :class:`ModelUnavailableError`, naming the URI and the error, when there is no fallback
    folder or it does not load either: the service never serves without a model.
    """
    try:
        _, model = holder.load(uri)
        return model
    except Exception as error:  # noqa: BLE001 - any failure to load: fall back or stop, saying why
        reason = _reason(error)
    if not fallback_dir:
        message = (f"cannot serve: the model {uri} could not be loaded ({reason}); no fallback model folder is "
                   f"configured (--fallback-model-dir or ${FALLBACK_ENV}); the service does not run without a model")
        log.critical(message)
        raise ModelUnavailableError(message)
    folder = Path(fallback_dir)
    try:
        exported = LoadedModel.load(str(folder))
    except Exception as error:  # noqa: BLE001 - neither loads: stop
        message = (f"cannot serve: the model {uri} could not be loaded ({reason}), nor the fallback model folder "
                   f"{folder} ({_reason(error)}); the service does not run without a model")
        log.critical(message)
        raise ModelUnavailableError(message) from None
    note = f"{uri} could not be loaded at start-up ({reason}); serving the exported model folder {folder}"
    model = dataclasses.replace(exported, version=f"{exported.version or 'unknown'} {FALLBACK_VERSION_NOTE}",
                                fallback=note)
    holder.install(model)
    log.critical("FALLBACK MODEL IN SERVICE: %s (%s version %s); every answer names version %r until the "
                 "registry model is loaded again (alias check or POST /v1/admin/reload)",
                 note, exported.name, exported.version, model.version)
    return model
