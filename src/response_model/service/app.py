"""The prediction service: a FastAPI app serving one model bundle behind API keys, with an audit trail.

``create_app(model_uri, db_url)`` loads the model once at start-up (``/readyz`` answers 200 only
then), checks bearer tokens against :class:`~response_model.service.keys.KeyStore` and appends every
prediction request — accepted or rejected (401, 403, 413, 422) — to the
:class:`~response_model.service.audit.AuditTrail` before answering. ``POST /v1/admin/reload`` loads a
model fully and then swaps one reference, so requests in flight finish on the model they started with.

What an answer holds, and why, is in :mod:`response_model.service.answers`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from response_model.config import load_yaml
from response_model.modeling.bundle import ResponseModelBundle
from response_model.modeling.interpret import finite
from response_model.modeling.predict import as_bundle, load_model
from response_model.privacy import PseudonymKeyError, pseudonym_key
from response_model.schema import PatientRecord, field_errors
from response_model.service.answers import LIMITATIONS, audit_outputs, predict_many
from response_model.service.audit import (
    AuditTrail,
    RawIdentifierError,
    input_digest,
)
from response_model.service.auditor import router as auditor_router
from response_model.service.guard import BodyGuard, replay
from response_model.service.keys import KeyInfo, KeyStore, make_engine
from response_model.service.models import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    ModelInfo,
    PredictionRequest,
    PredictionResponse,
    ReloadRequest,
    ReloadResponse,
)

log = logging.getLogger(__name__)

MODEL_URI_ENV = "RESPONSE_MODEL_URI"
ALIAS_CHECK_ENV = "RESPONSE_MODEL_ALIAS_CHECK_SECONDS"
DEFAULT_ALIAS_CHECK_SECONDS = 60.0
PREDICTION_ENDPOINTS = {"/v1/predictions": "POST /v1/predictions", "/v1/predictions:batch": "POST /v1/predictions:batch"}
CLINICAL_ROLES = ("clinician", "admin")

# -- the loaded model ---------------------------------------------------------------------------


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
        model = load_model(uri)
        bundle = as_bundle(model)
        bundle.predictor()  # made once per loaded bundle, before the first request
        meta = bundle.metadata
        return cls(bundle, uri, meta.get("model_name"), meta.get("model_version"))

    def names(self) -> dict[str, str | None]:
        return {"model_name": self.name, "model_version": self.version, "model_uri": self.uri}


class ModelHolder:
    """Holds the current model; :meth:`swap` replaces the reference atomically (one assignment)."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
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


def default_model_uri() -> str:
    """``$RESPONSE_MODEL_URI``, else ``models:/<registered_model of configs/train/default.yaml>@champion``."""
    uri = os.environ.get(MODEL_URI_ENV, "").strip()
    if uri:
        return uri
    name = load_yaml("train/default.yaml").get("registered_model", "hcc-response")
    return f"models:/{name}@champion"


# -- predictions --------------------------------------------------------------------------------


def _regimen_errors(bundle: ResponseModelBundle, regimens: Sequence[str] | None) -> list[dict[str, Any]]:
    if regimens is None:
        return []
    errors = []
    allowed = [r.name for r in bundle.candidate_regimens()]
    if not regimens:
        errors.append({"field": "regimens", "value": [], "message": "regimens: empty list; give null for every candidate"})
    for i, name in enumerate(regimens):
        if name not in allowed:
            errors.append({"field": f"regimens.{i}", "value": name,
                           "message": f"regimens: {name!r} is not a regimen this model scores; expected one of "
                                      f"{', '.join(allowed)}"})
    return errors


def request_errors(body: Any) -> list[dict[str, Any]]:
    """Field-level errors of a prediction request body, with the CLI's texts for the patient record."""
    if not isinstance(body, dict):
        return [{"field": "body", "value": None,
                 "message": f"body: expected a JSON object with 'patient', not {type(body).__name__}"}]
    errors: list[dict[str, Any]] = []
    if "patient" not in body:
        errors.append({"field": "patient", "value": None, "message": "patient: required field is missing"})
    else:
        try:
            PatientRecord.model_validate(body["patient"])
        except ValidationError as error:
            for e in field_errors(error):
                value = None if e.message.endswith("required field is missing") else _jsonable(e.value)
                errors.append({"field": f"patient.{e.field}" if e.field != "record" else "patient",
                               "value": value, "message": e.message})
    try:
        PredictionRequest.model_validate({**body, "patient": {"age": 60, "sex": "female"}})
    except ValidationError as error:
        for e in field_errors(error, ", ".join(PredictionRequest.model_fields)):
            errors.append({"field": e.field, "value": _jsonable(e.value), "message": e.message})
    return errors


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


# -- the app ------------------------------------------------------------------------------------


class AuthError(HTTPException):
    def __init__(self, status: int, message: str, key: KeyInfo | None = None) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, headers=headers)
        self.key = key


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _body_json(request: Request) -> tuple[Any, str | None]:
    """(parsed body or None, input digest or None); never raises."""
    try:
        raw = await request.body()
    except Exception:  # noqa: BLE001 - the stream may be gone; audit what we can
        return None, None
    if not raw:
        return None, None
    try:
        body = json.loads(raw)
        return body, input_digest(body)
    except (ValueError, Exception):  # noqa: BLE001 - not JSON (or NaN): digest the bytes
        return None, hashlib.sha256(raw).hexdigest()


ECHOED_ID_MESSAGE = ("patient_id: the identifier also appears elsewhere in the prediction's audit record (its "
                     "output, the endpoint or the model name), so it could not be pseudonymised safely; use a "
                     "longer, unique identifier")


def _raw_patient_id(body: Any) -> str | None:
    """The raw patient id of a request body (top level, else inside the patient), or None."""
    if not isinstance(body, dict):
        return None
    raw = body.get("patient_id")
    if not raw and isinstance(body.get("patient"), dict):
        raw = body["patient"].get("patient_id")
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


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


FALLBACK_ENV = "RESPONSE_MODEL_FALLBACK_MODEL_DIR"
FALLBACK_VERSION_NOTE = "(FALLBACK: exported folder)"


class ModelUnavailableError(RuntimeError):
    """Neither the model URI nor a fallback folder could be loaded at start-up: the service does not start."""


def _reason(error: BaseException) -> str:
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
        holder.load(uri)
        return holder.current
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
    import dataclasses

    model = dataclasses.replace(exported, version=f"{exported.version or 'unknown'} {FALLBACK_VERSION_NOTE}",
                                fallback=note)
    with holder._reload_lock:
        holder._current = model
    log.critical("FALLBACK MODEL IN SERVICE: %s (%s version %s); every answer names version %r until the "
                 "registry model is loaded again (alias check or POST /v1/admin/reload)",
                 note, exported.name, exported.version, model.version)
    return model


def create_app(model_uri: str | None = None, db_url: str | None = None,
               alias_check: float | None = None, fallback_model_dir: str | Path | None = None) -> FastAPI:
    """The service app: loads ``model_uri`` (default :func:`default_model_uri`) once at start-up.

    ``db_url``: SQLAlchemy URL of the key store and audit trail (default ``$RESPONSE_MODEL_DB_URL``
    or ``sqlite:///<cwd>/service.db``). Raises PseudonymKeyError now if
    ``$RESPONSE_MODEL_PSEUDONYM_KEY`` is unset: the audit trail could not pseudonymise patient ids.
    For an alias URI (``models:/NAME@champion``) the alias is checked every ``alias_check``
    seconds (default :func:`alias_check_seconds`; 0 = never) and a newly promoted version swapped in.
    ``fallback_model_dir`` (default ``$RESPONSE_MODEL_FALLBACK_MODEL_DIR``): an exported model folder
    served, loudly labelled, when ``model_uri`` cannot be loaded at start-up (see :func:`load_at_start`).
    Request bodies are limited in size and checked for duplicate keys (:mod:`response_model.service.guard`).
    """
    try:
        pseudonym_key()
    except PseudonymKeyError as error:
        raise PseudonymKeyError(f"cannot start the prediction service: {error}") from None
    uri = model_uri or default_model_uri()
    fallback = fallback_model_dir or os.environ.get(FALLBACK_ENV, "").strip() or None
    holder = ModelHolder()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = make_engine(db_url)
        state["keys"], state["audit"] = KeyStore(engine), AuditTrail(engine)
        log.info("loading model %s", uri)
        await run_in_threadpool(load_at_start, holder, uri, fallback)
        current = holder.current
        log.info("model %s version %s loaded; ready", current.name, current.version)
        interval = alias_check_seconds() if alias_check is None else float(alias_check)
        task = None
        if interval > 0 and uri.startswith("models:/") and "@" in uri:
            async def watch() -> None:
                while True:
                    await asyncio.sleep(interval)
                    try:
                        await run_in_threadpool(check_alias, holder, uri)
                    except Exception:  # noqa: BLE001 - keep serving the current model; try again later
                        log.exception("alias check of %s failed; the current model stays in service", uri)
            task = asyncio.create_task(watch())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            engine.dispose()

    app = FastAPI(
        title="HCC response model",
        version="1",
        description="Probabilities of objective response and primary resistance per regimen for advanced HCC, "
                    "with explanations; every prediction request is audited.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.services = state

    def audit(records: list[dict[str, Any]]) -> None:
        state["audit"].append_many(records, entries=False)

    def audit_rejected(record: dict[str, Any]) -> None:
        """Audit a rejection; without its raw patient id if the trail refuses that id (echoed elsewhere)."""
        try:
            audit([record])
        except RawIdentifierError:
            audit([{**record, "patient_id": None}])

    def _server_failure(base: dict[str, Any], error: Exception) -> dict[str, Any]:
        log.exception("prediction failed")
        message = f"the prediction failed ({type(error).__name__}); the request was recorded in the audit trail"
        audit([{**base, "status": "rejected", "http_status": 500, "detail": {"error": message}}])
        return {"detail": message}

    def _server_error(base: dict[str, Any], error: Exception) -> JSONResponse:
        return JSONResponse(_server_failure(base, error), status_code=500)

    def authenticate(request: Request, roles: Sequence[str], token: str | None = None) -> KeyInfo:
        """The key of ``token`` (default: the request's bearer token); AuthError 401 / 403 otherwise."""
        key = state["keys"].authenticate(token if token is not None else _bearer(request))
        if key is None:
            raise AuthError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'")
        if key.role not in roles:
            raise AuthError(403, f"role {key.role!r} may not use this endpoint; needs one of {', '.join(roles)}", key)
        return key

    def role(*roles: str):
        # async: run on the event loop (one indexed read of the key's row and, for a key seen before,
        # a SHA-256) rather than in a worker thread of its own — one thread hand-off less per request
        async def dependency(request: Request) -> KeyInfo:
            return authenticate(request, roles)
        return dependency

    # for routers defined in other modules (the web page, the auditors' endpoints): the same
    # authentication and audit trail as the JSON API
    app.state.authenticate = authenticate
    app.state.role = role
    app.state.audit = audit

    async def audit_rejection(request: Request, status: int, key: KeyInfo | None, detail: Any) -> None:
        endpoint = PREDICTION_ENDPOINTS.get(request.url.path)
        if endpoint is None or request.method != "POST":
            return
        body, digest = await _body_json(request)
        await run_in_threadpool(record_rejection, endpoint, status, key, body, digest, detail)

    def record_rejection(endpoint: str, status: int, key: KeyInfo | None, body: Any, digest: str | None,
                         detail: Any) -> None:
        """Append the audit record of a rejected prediction request (raw patient id pseudonymised)."""
        model = holder.current
        patient_id = _raw_patient_id(body) if status != 401 else None
        record = {"endpoint": endpoint, "status": "rejected", "http_status": status,
                  "key_id": key.key_id if key else None, "role": key.role if key else None,
                  "model_name": model.name if model else None, "model_version": model.version if model else None,
                  "input_digest": digest, "patient_id": patient_id, "detail": detail}
        try:
            audit([record])
        except Exception:  # the record naming the raw id elsewhere, etc.: keep a record without it
            record["patient_id"] = None
            audit([record])

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError):
        await audit_rejection(request, exc.status_code, exc.key, {"error": exc.detail})
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # authentication comes first: nobody without a valid key learns what is wrong with a body
        if request.url.path in PREDICTION_ENDPOINTS or request.url.path == "/v1/admin/reload":
            roles = ("admin",) if request.url.path == "/v1/admin/reload" else CLINICAL_ROLES
            try:
                key = await run_in_threadpool(authenticate, request, roles)
            except AuthError as auth:
                return await _auth_error(request, auth)
        else:
            key = None
        body, _ = await _body_json(request)
        errors = request_errors(body) if request.url.path == "/v1/predictions" and body is not None else []
        if not errors:
            for item in exc.errors():
                loc = [str(p) for p in item.get("loc", ()) if p != "body"]
                path = ".".join(loc) or "body"
                errors.append({"field": path, "value": _jsonable(item.get("input")),
                               "message": f"{path}: {item.get('msg')}"})
        await audit_rejection(request, 422, key, {"errors": errors})
        return JSONResponse({"errors": errors}, status_code=422)

    async def _guard_reject(scope: dict, body: bytes | None, status: int, errors: list[dict[str, Any]]):
        """The answer to a body the guard refused (413 too large, 422 duplicate key): authenticated
        first, and audited on the prediction endpoints, like any other rejection."""
        request = Request(scope, receive=replay(body))
        if scope["path"] in PREDICTION_ENDPOINTS or scope["path"] == "/v1/admin/reload":
            roles = ("admin",) if scope["path"] == "/v1/admin/reload" else CLINICAL_ROLES
            try:
                key = await run_in_threadpool(authenticate, request, roles)
            except AuthError as auth:
                return await _auth_error(request, auth)
            await audit_rejection(request, status, key, {"errors": errors})
        return JSONResponse({"errors": errors}, status_code=status)

    app.add_middleware(BodyGuard, reject=_guard_reject, json_paths=[*PREDICTION_ENDPOINTS, "/v1/admin/reload"])

    # -- probes --------------------------------------------------------------------------------

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz():
        model = holder.current
        if model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", **model.names(), **({"fallback": model.fallback} if model.fallback else {})}

    # -- predictions -----------------------------------------------------------------------------

    responses_doc = {401: {"description": "No or bad API key"}, 403: {"description": "Wrong role"},
                     413: {"model": ErrorResponse, "description": "Body larger than the limit (refused before parsing; "
                                                                  "see response_model.service.guard)"},
                     422: {"model": ErrorResponse, "description": "Field-level validation errors"}}

    def predict_one(body: PredictionRequest, key: KeyInfo, endpoint: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer) of one valid prediction request, audited before it returns: 200 and the
        prediction, 422 and ``{"errors": [...]}``, or 500 and ``{"detail": ...}``."""
        loaded = holder.require()
        digest = input_digest(body.model_dump(mode="json"))
        errors = _regimen_errors(loaded.bundle, body.regimens)
        patient_id = body.patient_id or body.patient.patient_id
        base = {"endpoint": endpoint, "key_id": key.key_id, "role": key.role,
                "model_name": loaded.name, "model_version": loaded.version, "input_digest": digest,
                "patient_id": patient_id}
        if errors:
            audit_rejected({**base, "status": "rejected", "http_status": 422, "detail": {"errors": errors}})
            return 422, {"errors": errors}
        try:
            response = predict_many(loaded, [body])[0]
        except Exception as error:  # noqa: BLE001 - audited, then answered with a 500
            return 500, _server_failure(base, error)
        outputs, explanations = audit_outputs(response)
        try:
            audit([{**base, "status": "accepted", "http_status": 200, "prediction_id": response["prediction_id"],
                    "regimens": [it["regimen"] for it in response["regimens"]], "outputs": outputs,
                    "explanations": explanations}])
        except RawIdentifierError:  # the raw id is echoed in the answer (or the record): refuse, audited
            errors = [{"field": "patient_id", "value": None, "message": ECHOED_ID_MESSAGE}]
            audit_rejected({**base, "status": "rejected", "http_status": 422, "detail": {"errors": errors}})
            return 422, {"errors": errors}
        return 200, response

    # for the clinician page (web.py): the same prediction, audit records and rejections as the JSON API
    app.state.predict_one = predict_one
    app.state.record_rejection = record_rejection

    @app.post("/v1/predictions", response_model=PredictionResponse, tags=["predictions"], responses=responses_doc)
    def predict(body: PredictionRequest, request: Request, key: KeyInfo = Depends(role(*CLINICAL_ROLES))):
        status, answer = predict_one(body, key, PREDICTION_ENDPOINTS["/v1/predictions"])
        if status != 200:
            return JSONResponse(answer, status_code=status)
        # The answer is built field for field as PredictionResponse (which documents it in the OpenAPI
        # schema): written by orjson directly instead of FastAPI's validation and encoding pass of the
        # response model, for the same JSON (tests check the answer is what that pass would send, and
        # the property-based run checks conformance to the schema)
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.post("/v1/predictions:batch", response_model=BatchResponse, tags=["predictions"],
              responses={**responses_doc, 413: {"model": ErrorResponse, "description": f"More than {MAX_BATCH} patients, "
                                                "or a body larger than the limit (refused before parsing)"}})
    def predict_batch(body: BatchRequest, request: Request, key: KeyInfo = Depends(role(*CLINICAL_ROLES))):
        loaded = holder.require()
        endpoint = PREDICTION_ENDPOINTS["/v1/predictions:batch"]
        base = {"endpoint": endpoint, "key_id": key.key_id, "role": key.role,
                "model_name": loaded.name, "model_version": loaded.version}
        if len(body.patients) > MAX_BATCH:
            message = f"patients: {len(body.patients)} given; at most {MAX_BATCH} per batch request"
            audit([{**base, "status": "rejected", "http_status": 413,
                    "input_digest": input_digest(body.model_dump(mode="json")), "detail": {"error": message}}])
            return JSONResponse({"errors": [{"field": "patients", "value": len(body.patients), "message": message}]},
                                status_code=413)
        valid: list[tuple[int, PredictionRequest]] = []
        results: list[dict[str, Any] | None] = [None] * len(body.patients)
        records: list[dict[str, Any] | None] = [None] * len(body.patients)
        for index, item in enumerate(body.patients):
            try:
                digest = input_digest(item)
            except Exception:  # noqa: BLE001 - not representable as canonical JSON
                digest = None
            raw_id = _raw_patient_id(item)
            errors = request_errors(item)
            if not errors:
                parsed = PredictionRequest.model_validate(item)
                errors = _regimen_errors(loaded.bundle, parsed.regimens)
            if errors:
                results[index] = {"index": index, "ok": False, "errors": errors}
                records[index] = {**base, "status": "rejected", "http_status": 422, "input_digest": digest,
                                  "patient_id": raw_id,
                                  "detail": {"index": index, "errors": errors}}
            else:
                valid.append((index, parsed))
                records[index] = {**base, "input_digest": digest,
                                  "patient_id": parsed.patient_id or parsed.patient.patient_id}
        try:
            predictions = predict_many(loaded, [p for _, p in valid]) if valid else []
        except Exception as error:  # noqa: BLE001 - audited, then answered with a 500
            return _server_error({**base, "input_digest": input_digest(body.model_dump(mode="json"))}, error)
        for (index, _), response in zip(valid, predictions):
            outputs, explanations = audit_outputs(response)
            records[index].update({"status": "accepted", "http_status": 200, "prediction_id": response["prediction_id"],
                                   "regimens": [it["regimen"] for it in response["regimens"]],
                                   "outputs": {"index": index, **outputs}, "explanations": explanations})
            results[index] = {"index": index, "ok": True, "prediction": response}
        if records:
            try:
                audit(records)
            except RawIdentifierError:  # some row's raw id is echoed elsewhere in its record: fix those rows
                for index, record in enumerate(records):
                    try:
                        state["audit"].check(record)
                        continue
                    except RawIdentifierError:
                        pass
                    if record["status"] == "accepted":  # refused, like a single prediction echoing its id
                        errors = [{"field": "patient_id", "value": None, "message": ECHOED_ID_MESSAGE}]
                        record = {**base, "input_digest": record.get("input_digest"), "patient_id": record["patient_id"],
                                  "status": "rejected", "http_status": 422, "detail": {"index": index, "errors": errors}}
                        results[index] = {"index": index, "ok": False, "errors": errors}
                        try:
                            state["audit"].check(record)
                        except RawIdentifierError:
                            record["patient_id"] = None
                    else:  # already a rejection: keep it, without the id the trail cannot store
                        record = {**record, "patient_id": None}
                    records[index] = record
                audit(records)
        else:
            audit([{**base, "status": "accepted", "http_status": 200, "input_digest": input_digest([]),
                    "detail": {"rows": 0}}])
        n_ok = sum(1 for r in results if r and r["ok"])
        return {"model_name": loaded.name, "model_version": loaded.version, "n_ok": n_ok,
                "n_rejected": len(body.patients) - n_ok, "results": results}

    # -- model ---------------------------------------------------------------------------------------

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"])
    def model_info(key: KeyInfo = Depends(role("clinician", "auditor", "admin"))):
        loaded = holder.require()
        meta = loaded.bundle.metadata
        metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items() if finite(v) is not None}
        return {"model_name": loaded.name, "model_version": loaded.version, "model_uri": loaded.uri,
                "training_date": meta.get("training_date"), "data_digest": meta.get("data_digest"),
                "metrics": metrics, "intended_use": meta.get("intended_use"), "limitations": LIMITATIONS,
                "label": meta.get("label"), "regimen_classes": list(loaded.bundle.regimen_classes),
                "candidate_regimens": [r.name for r in loaded.bundle.candidate_regimens()],
                "fallback": loaded.fallback}

    @app.post("/v1/admin/reload", response_model=ReloadResponse, tags=["admin"])
    def reload(body: ReloadRequest | None = None, key: KeyInfo = Depends(role("admin"))):
        target = (body.model_uri if body is not None else None) or uri
        try:
            previous, current = holder.load(target)
        except Exception as error:  # noqa: BLE001 - the old model stays in service
            log.exception("reload of %s failed", target)
            raise HTTPException(500, f"could not load {target}: {error}; the previous model stays in service") from None
        log.info("key %s reloaded the model: %s", key.key_id, current.names())
        return {"previous": previous.names() if previous else {}, "current": current.names()}

    app.include_router(auditor_router)  # GET /v1/predictions[/{id}|:export]: the trail, for auditors
    from response_model.service.model_report import router as report_router

    app.include_router(report_router)  # GET /v1/model/report: validation report and model card, for auditors
    from response_model.service.web import (
        router as page,  # imports this module: here, not at the top
    )

    app.include_router(page)  # the clinician page at /
    return app


def serve(model_uri: str | None = None, host: str = "127.0.0.1", port: int = 8000, db_url: str | None = None,
          fallback_model_dir: str | Path | None = None) -> None:
    """Run the service with uvicorn (one process; the model is loaded once at start-up). Exits non-zero
    (uvicorn's start-up failure) when neither the model nor a fallback folder loads."""
    import uvicorn

    uvicorn.run(create_app(model_uri, db_url, fallback_model_dir=fallback_model_dir), host=host, port=port,
                log_level="info")
