"""The prediction service: a FastAPI app serving one model bundle behind API keys, with an audit trail.

``create_app(model_uri, db_url)`` loads the model once at start-up (``/readyz`` answers 200 only
then), checks bearer tokens against :class:`~response_model.service.keys.KeyStore` and appends every
prediction request — accepted or rejected (401, 403, 413, 422) — to the
:class:`~response_model.service.audit.AuditTrail` before answering; every other answer but the probes'
and the documentation's is recorded too, once, with its status
(:mod:`~response_model.service.every_answer`, which also answers a clean 500 for an unhandled error and
writes the access log). ``POST /v1/admin/reload`` loads a
model fully and then swaps one reference, so requests in flight finish on the model they started with.

Where things are: the state (:mod:`~response_model.service.state`) and the dependencies that reach
it (:mod:`~response_model.service.deps`); the routes, one router per resource
(:mod:`~response_model.service.routers`); scoring and auditing a request
(:mod:`~response_model.service.prediction`); the answers to refused requests
(:mod:`~response_model.service.errors`); the model holder, the start-up fallback and the alias check
(:mod:`~response_model.service.holder`). What an answer holds, and why, is in
:mod:`response_model.service.answers`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from response_model.privacy import AuditKeyError, PseudonymKeyError, audit_keyring, pseudonym_key
from response_model.service.audit import AuditTrail
from response_model.service.audit.checkpoints import checkpoint_records, checkpoint_seconds, load_signing_key
from response_model.service.auth import AuthError
from response_model.service.errors import (
    GUARDED_ROLES,
    on_auth_error,
    on_guard_refusal,
    on_validation_error,
    prediction_body_errors,
)
from response_model.service.every_answer import AuditEveryAnswer
from response_model.service.guard import BodyGuard
from response_model.service.headers import ServiceApp
from response_model.service.holder import LoadedModel, is_alias_uri, load_at_start, watch_alias
from response_model.service.keys import KeyStore, make_engine
from response_model.service.recording import record_answer
from response_model.service.routers import ROUTERS, docs
from response_model.service.state import ServiceState, Settings

__all__ = ["LoadedModel", "create_app", "lifespan", "serve"]  # LoadedModel: named here by answers.py's type hints

log = logging.getLogger(__name__)

#: the interpreter's thread switch interval while serving (see :func:`serve`)
SWITCH_INTERVAL_SECONDS = 0.001

TITLE = "HCC response model"
DESCRIPTION = ("Probabilities of objective response and primary resistance per regimen for advanced HCC, "
               "with explanations; every prediction request is audited.")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the key store and trail, load the model (or the fallback folder) and watch its alias while the app runs."""
    state: ServiceState = app.state.service
    settings = state.settings
    engine = make_engine(settings.db_url)
    trail = AuditTrail(engine, checkpoint_every=checkpoint_records())
    state.open(KeyStore(engine), trail)
    checkpoints = asyncio.create_task(_checkpoint_periodically(trail, checkpoint_seconds()))
    log.info("loading model %s", settings.model_uri)
    model = await run_in_threadpool(load_at_start, state.holder, settings.model_uri, settings.fallback_dir)
    log.info("model %s version %s loaded; ready", model.name, model.version)
    interval = settings.alias_interval()
    watcher = None
    if interval > 0 and is_alias_uri(settings.model_uri):
        watcher = asyncio.create_task(watch_alias(state.holder, settings.model_uri, interval))
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
        checkpoints.cancel()
        await run_in_threadpool(_checkpoint, trail)  # the head at shutdown
        engine.dispose()


def _checkpoint(trail: AuditTrail) -> None:
    """Publish a checkpoint of the trail's head if it moved; a failure is logged (the records are stored)."""
    try:
        trail.checkpoint_if_moved()
    except Exception:  # noqa: BLE001 - a witness that is down must not stop the service
        log.exception("could not publish a checkpoint of the audit trail")


async def _checkpoint_periodically(trail: AuditTrail, seconds: float) -> None:
    """Every ``seconds``, publish a checkpoint of the trail's head if records were added (runs until cancelled)."""
    while True:
        await asyncio.sleep(seconds)
        await run_in_threadpool(_checkpoint, trail)


def create_app(model_uri: str | None = None, db_url: str | None = None,
               alias_check: float | None = None, fallback_model_dir: str | Path | None = None) -> FastAPI:
    """Return the service app; it loads ``model_uri`` (default :func:`~response_model.service.holder.default_model_uri`)
    once at start-up.

    ``db_url``: SQLAlchemy URL of the key store and audit trail (default ``$RESPONSE_MODEL_DB_URL``
    or ``sqlite:///<cwd>/service.db``). Raises PseudonymKeyError now if
    ``$RESPONSE_MODEL_PSEUDONYM_KEY`` is unset: the audit trail could not pseudonymise patient ids; and
    AuditKeyError if the audit chain's HMAC key or the checkpoint signing key is missing. While it runs,
    the service publishes a signed checkpoint of the trail's head every ``$RESPONSE_MODEL_CHECKPOINT_RECORDS``
    records, every ``$RESPONSE_MODEL_CHECKPOINT_SECONDS`` seconds (when records were added) and at shutdown.
    For an alias URI (``models:/NAME@champion``) the alias is checked every ``alias_check``
    seconds (default ``$RESPONSE_MODEL_ALIAS_CHECK_SECONDS``, else 60; 0 = never) and a newly promoted version
    swapped in. ``fallback_model_dir`` (default ``$RESPONSE_MODEL_FALLBACK_MODEL_DIR``): an exported model
    folder served, loudly labelled, when ``model_uri`` cannot be loaded at start-up
    (:func:`~response_model.service.holder.load_at_start`). Request bodies are limited in size and checked
    for duplicate keys (:mod:`response_model.service.guard`); every answer carries the security headers of
    :mod:`response_model.service.headers`. ``/docs`` and ``/redoc`` need no internet.
    """
    try:
        pseudonym_key()
    except PseudonymKeyError as error:
        raise PseudonymKeyError(f"cannot start the prediction service: {error}") from None
    try:  # the trail's keys, outside the database: the chain's HMAC key and the checkpoint signing key
        audit_keyring()
        load_signing_key()
    except AuditKeyError as error:
        raise AuditKeyError(f"cannot start the prediction service: {error}") from None
    app = ServiceApp(title=TITLE, version="1", description=DESCRIPTION, lifespan=lifespan,
                     docs_url=None, redoc_url=None)  # served by routers.docs, from the service's own assets
    state = app.state.service = ServiceState(Settings.resolve(model_uri, db_url, alias_check, fallback_model_dir))
    app.add_middleware(BodyGuard, reject=on_guard_refusal, json_paths=list(GUARDED_ROLES),
                       checks={"/v1/predictions": prediction_body_errors})
    # outermost: it sees the guard's refusals and every exception (see every_answer's docstring)
    app.add_middleware(AuditEveryAnswer, record=functools.partial(record_answer, state))
    app.add_exception_handler(AuthError, on_auth_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.mount(docs.ASSETS_URL, docs.assets(), name="docs-assets")
    for router in ROUTERS:
        app.include_router(router)
    return app


def serve(model_uri: str | None = None, host: str = "127.0.0.1", port: int = 8000, db_url: str | None = None,
          fallback_model_dir: str | Path | None = None) -> None:
    """Run the service with uvicorn (one process; the model is loaded once at start-up). Exits non-zero
    (uvicorn's start-up failure) when neither the model nor a fallback folder loads.

    uvicorn's access log is off: it would keep query strings (``?access_token=…``) and path parameters
    (a prediction id typed by a user may be a record number); the service writes its own
    (:mod:`~response_model.service.every_answer`: method, route template, status, duration)."""
    import uvicorn

    # the event loop waits for the GIL while a worker thread validates or scores; CPython hands it over
    # only every switch interval (5 ms by default), several times per answer: 1 ms keeps /healthz and
    # small answers quick while other requests are worked on in the threadpool
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    uvicorn.run(create_app(model_uri, db_url, fallback_model_dir=fallback_model_dir), host=host, port=port,
                log_level="info", access_log=False, log_config=log_config())


def log_config() -> dict:
    """uvicorn's logging configuration plus the service's loggers (``response_model``, its access log
    included), written to standard error like uvicorn's own."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["response_model"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
