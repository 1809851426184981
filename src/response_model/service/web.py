"""The clinician page at ``/``: a server-rendered form (Jinja2, plain HTML and CSS, no JavaScript).

Sessions: a clinician signs in by pasting their API key (``POST /sign-in``). The key is checked once
and not kept: the browser gets an opaque random session id in an HttpOnly, ``SameSite=Strict``
cookie (``rm_session``), and the server keeps only the id's SHA-256, bound to the key id, in the
key store's database (:mod:`response_model.service.sessions`). Every request with the cookie checks
that the session is open, within its idle and absolute lifetimes, and that its key is not revoked;
``POST /sign-out`` ends the session on the server, so a copied cookie is worthless from then on. A
fresh id is issued at every sign-in (a planted session cookie cannot be adopted). Predicting needs
the clinician or admin role; no session renders the sign-in page (401 saying why a session ended),
another role a page saying which roles may use it (403).

CSRF: besides the ``SameSite=Strict`` cookies (not sent with requests started by another site), a
form sent by a browser that says another site started it (``Sec-Fetch-Site: cross-site`` or
``same-site``) is refused, and every form carries a token that must be the HMAC of the browser's
secret id for that form's purpose (:func:`~response_model.service.sessions.form_token`):

* signed in, the session id — a token is valid for that session only, and no cookie the browser
  holds besides the session's can change that (a planted ``rm_csrf``-style cookie with an attacker's
  own token is simply not what the token is checked against);
* on the sign-in form, before any session exists, a pre-session id the server issues in its own
  HttpOnly cookie (``rm_presession``) — double submit, the token bound to that cookie rather than
  equal to it, so the cookie's value never appears in a page; it is dropped at sign-in. Double submit
  cannot stop an attacker able to write cookies for this host (a sibling subdomain over plain HTTP)
  from signing a browser in with the attacker's key; ``SameSite`` and ``Sec-Fetch-Site`` are what
  refuse such a request from another site, and serving over HTTPS keeps others from writing cookies.

A form without its token, or with another, is refused (403).

Every answer carries the service's security headers (:mod:`response_model.service.headers`); the
page's own Content-Security-Policy (:func:`page_policy`) allows its one style sheet by hash and
forms posted to itself, nothing else.

The form is generated from :class:`~response_model.schema.PatientRecord` (field types, descriptions,
units) and ``configs/ranges.yaml`` (plausible ranges); a pasted JSON record is the alternative. Both
go through the JSON API's code: :func:`~response_model.service.validation.request_errors` for the
field-level messages (the CLI's texts, shown beside their fields) and
:func:`~response_model.service.prediction.predict_one` for the prediction and its audit record; rejected
submissions are audited like the API's 401/403/422s
(:func:`~response_model.service.recording.record_rejection`).
The raw patient id is never written back into a page.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import textwrap
import types
import urllib.parse
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib.resources import files
from typing import Any, Union, get_args, get_origin

import jinja2
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from response_model.genes import suggestions_at_most
from response_model.modeling.bundle import OUTCOMES
from response_model.schema import PatientRecord, cancer_types, field_ranges
from response_model.service.audit import input_digest
from response_model.service.auth import CLINICAL_ROLES, AuthError, authenticate
from response_model.service.deps import ServiceDep, state_of
from response_model.service.guard import LIMITS, body_errors
from response_model.service.headers import style_policy
from response_model.service.keys import ROLES, KeyInfo
from response_model.service.models import PredictionRequest
from response_model.service.prediction import predict_one
from response_model.service.recording import record_rejection
from response_model.service.sessions import (
    PageSession,
    SessionEnded,
    form_token,
    new_browser_id,
    token_matches,
    well_formed,
)
from response_model.service.state import ServiceState
from response_model.service.validation import SUGGESTED_PER_REQUEST, raw_patient_id, request_errors

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "rm_session"  # the session id (never the API key)
PRESESSION_COOKIE = "rm_presession"  # the sign-in form's browser id, before a session exists
CSRF_FIELD = "csrf_token"
PAGE_PURPOSE = "signed-in forms"  # the patient form and sign-out, bound to the session
SIGN_IN_PURPOSE = "sign-in"  # the sign-in form, bound to the pre-session
PAGE_ENDPOINT = "POST / (clinician page)"
MAX_FORM_BYTES = 256 * 1024  # the service's body guard (guard.py) refuses larger bodies first by default
#: what the alterations box accepts for "sequenced, nothing found" (empty = not sequenced)
NOTHING_FOUND = ("none", "[]", "none found")

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("response_model.service", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _percent(p: float | None) -> str:
    return "—" if p is None else f"{100 * p:.0f} %"


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


_ENV.filters["percent"] = _percent
_ENV.filters["signed"] = _signed


# -- the form, generated from the schema ---------------------------------------------------------

#: the first field of each group of the form, in the schema's order (later fields join the group)
_GROUP_STARTS = {
    "age": "Patient", "aetiology": "Liver", "bclc_stage": "Tumour", "nlr": "Blood counts",
    "bmi": "Lifestyle", "line_of_therapy": "Treatment context", "pdl1_tps": "Tumour microenvironment",
    "alterations": "Genomics",
}
_ACRONYMS = {"bclc", "afp", "inr", "nlr", "tmb", "msi", "bmi", "ecog", "cd8", "hla", "loh", "hed", "fcna", "iv"}
_LABELS = {"child_pugh_class": "Child-Pugh class", "pdl1_tps": "PD-L1 TPS", "pdl1_cps": "PD-L1 CPS",
           "largest_lesion_cm": "Largest lesion", "teff_signature": "T-effector signature",
           "treg_signature": "Treg signature"}
_ALTERATIONS_HELP = ("compact text separated by ';', e.g. CTNNB1 p.S45P; FGF19 amp; TERT promoter — "
                     "empty = not sequenced; 'none' = sequenced, nothing found")


@dataclass(frozen=True)
class FormField:
    """One input of the form: a field of the patient record."""

    name: str
    label: str
    kind: str  # number, integer, choice, text or alterations
    unit: str | None = None
    help: str | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (value, text); "" = missing
    default: str = ""
    required: bool = False


def _humanise(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    words = [w.upper() if w in _ACRONYMS else w for w in name.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def _plain(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _form_field(name: str) -> FormField:
    info = PatientRecord.model_fields[name]
    base = _base_type(info.annotation)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    spec = field_ranges().get(name)
    unit = extra.get("unit") or (spec.unit if spec else None)
    notes = [info.description] if info.description else []
    if spec is not None:
        notes.append(f"plausible {_plain(spec.min)}–{_plain(spec.max)} {spec.unit}")
    common = {"name": name, "label": _humanise(name), "unit": unit, "required": info.is_required()}
    if name == "cancer_type":
        return FormField(**common, kind="choice", choices=tuple((c, c) for c in cancer_types()),
                         default=str(info.default), help="; ".join(notes) or None)
    if get_origin(base) is list:
        return FormField(**common, kind="alterations", help=_ALTERATIONS_HELP)
    if isinstance(base, type) and issubclass(base, Enum):
        choices = (("", "missing"),) + tuple((m.value, m.value.replace("_", " ")) for m in base)
        if info.is_required():
            choices = choices[1:]
        return FormField(**common, kind="choice", choices=choices, help="; ".join(notes) or None)
    if base is bool:
        return FormField(**common, kind="choice", choices=(("", "missing"), ("true", "yes"), ("false", "no")),
                         help="; ".join(notes) or None)
    kind = "integer" if base is int else "number" if base is float else "text"
    return FormField(**common, kind=kind, help="; ".join(notes) or None)


@lru_cache(maxsize=1)
def form_groups() -> tuple[tuple[str, tuple[FormField, ...]], ...]:
    """The form's fieldsets: (title, fields) in the schema's order; every record field but patient_id."""
    groups: list[tuple[str, list[FormField]]] = []
    for name in PatientRecord.model_fields:
        if name == "patient_id":
            continue
        if name in _GROUP_STARTS or not groups:
            groups.append((_GROUP_STARTS.get(name, "Patient"), []))
        groups[-1][1].append(_form_field(name))
    return tuple((title, tuple(fields)) for title, fields in groups)


def form_fields() -> dict[str, FormField]:
    """Every input of the form by name."""
    return {f.name: f for _, fields in form_groups() for f in fields}


class Form:
    """A parsed ``application/x-www-form-urlencoded`` body."""

    def __init__(self, raw: bytes) -> None:
        self._values = urllib.parse.parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)

    def get(self, name: str) -> str:
        values = self._values.get(name)
        return values[0] if values else ""

    def getlist(self, name: str) -> list[str]:
        return list(self._values.get(name, []))


def _number(text: str, kind: str) -> Any:
    """A finite number from the text of a numeric input, or the text itself (the schema then says why)."""
    if not text.isascii():  # float() reads full-width and other non-ASCII digits; a clinician typed a slip
        return text
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    if kind == "integer":
        return int(value) if value.is_integer() else text
    return value


def patient_from_fields(form: Form) -> tuple[dict[str, Any], dict[str, str]]:
    """(patient dict for the schema, the texts entered by field); empty inputs are missing values."""
    entered = {name: form.get(name).strip() or field.default for name, field in form_fields().items()}
    patient: dict[str, Any] = {}
    for name, field in form_fields().items():
        text = entered[name]
        if not text:
            continue
        if field.kind == "alterations":
            patient[name] = [] if text.lower() in NOTHING_FOUND else text
        elif field.kind in ("number", "integer"):
            patient[name] = _number(text, field.kind)
        elif field.kind == "choice" and set(dict(field.choices)) == {"", "true", "false"}:
            patient[name] = text == "true" if text in ("true", "false") else text
        else:
            patient[name] = text
    return patient, entered


def _form_target(error_field: str, source: str) -> str:
    """The input an API error belongs beside: ``patient.albumin`` → ``albumin``; JSON errors → the JSON box."""
    if error_field.startswith("regimens"):
        return "regimens"
    if source == "json":
        return "patient_json"
    if error_field == "patient_id":
        return "patient_id"
    parts = error_field.split(".")
    if parts[0] == "patient":
        parts = parts[1:]
    name = parts[0] if parts else ""
    return name if name in form_fields() else "form"


# -- sessions and CSRF -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def page_policy() -> str:
    """Return the page's Content-Security-Policy: its one inline style sheet by hash, forms to itself, nothing else."""
    source = (files("response_model.service") / "templates" / "base.html").read_text(encoding="utf-8")
    return (f"default-src 'none'; style-src {style_policy(source)}; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


def _token_ok(request: Request, form: Form, browser_id: str | None, purpose: str) -> bool:
    """True if the form's token is ``purpose``'s token of ``browser_id`` (the session or pre-session cookie)
    and the browser does not say that another site sent the form (``Sec-Fetch-Site``)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    return token_matches(browser_id, purpose, form.get(CSRF_FIELD))


def _set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def _forget_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict")


def _render(request: Request, template: str, status: int = 200, *, session: PageSession | None,
            clear_session: bool = False, **context: Any) -> HTMLResponse:
    """Return the page ``template`` for ``session`` (None: signed out), its forms carrying the session's token,
    or, signed out, the sign-in token of the browser's pre-session cookie (set here when missing)."""
    presession = None
    if session is not None:
        token = form_token(session.session_id, PAGE_PURPOSE)
    else:
        current = request.cookies.get(PRESESSION_COOKIE)
        presession = None if well_formed(current) else new_browser_id()
        token = form_token(presession or current, SIGN_IN_PURPOSE)
    html = _ENV.get_template(template).render(csrf_token=token, csrf_field=CSRF_FIELD,
                                              key=session.key if session else None, **context)
    response = HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": page_policy()})
    if presession is not None:
        _set_cookie(response, request, PRESESSION_COOKIE, presession)
    if clear_session:
        _forget_cookie(response, SESSION_COOKIE)
    return response


def _redirect(request: Request) -> RedirectResponse:
    return RedirectResponse("/", status_code=303, headers={"Content-Security-Policy": page_policy()})


def _resume(request: Request, state: ServiceState) -> PageSession:
    """Return the browser's open session (any role); SessionEnded saying why there is none."""
    return state.sessions.resume(request.cookies.get(SESSION_COOKIE))


def _role_error(key: KeyInfo) -> str | None:
    """The refusal of a key whose role may not estimate responses, or None."""
    if key.role in CLINICAL_ROLES:
        return None
    return f"role {key.role!r} may not use this endpoint; needs one of {', '.join(CLINICAL_ROLES)}"


def _signed_out_page(request: Request, ended: SessionEnded) -> HTMLResponse:
    """The sign-in page; 401 saying why the session ended when the browser had one (its cookie is cleared)."""
    had_session = bool(request.cookies.get(SESSION_COOKIE))
    message = f"Your session is not valid any more: {ended}. Sign in again with a current key." if had_session else None
    status = 401 if had_session or request.method == "POST" else 200
    return _render(request, "signin.html", status, session=None, message=message, error=None,
                   lifetimes=_lifetimes(request), clear_session=had_session)


def _lifetimes(request: Request) -> str:
    return state_of(request).sessions.lifetimes.describe()


def _role_page(request: Request, session: PageSession) -> HTMLResponse:
    return _render(request, "message.html", 403, title="Access denied", session=session,
                   message=f"You are signed in with a key of role '{session.key.role}'. "
                           f"Estimating responses needs the role {' or '.join(CLINICAL_ROLES)}; "
                           "ask an administrator for a clinician key, or sign out and sign in with one.")


async def _read_form(request: Request) -> Form | None:
    """The form of a POST, or None when it is larger than :data:`MAX_FORM_BYTES`."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_FORM_BYTES:
        return None
    raw = await request.body()
    return None if len(raw) > MAX_FORM_BYTES else Form(raw)


def _too_large(request: Request) -> HTMLResponse:
    return _render(request, "message.html", 413, title="Form too large", session=None,
                   message=f"The form is larger than {MAX_FORM_BYTES // 1024} KiB; paste one patient at a time.")


def _csrf_refused(request: Request) -> HTMLResponse:
    return _render(request, "message.html", 403, title="Form expired", session=None,
                   message="This form's security token is missing or out of date (it may come from an old tab "
                           "or another site). Nothing was done. Go back to the page, reload it and submit again.")


# -- routes ---------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def page(request: Request, state: ServiceDep) -> HTMLResponse:
    """The sign-in page, or the empty patient form for a signed-in clinician."""
    try:
        session = _resume(request, state)
    except SessionEnded as ended:
        return _signed_out_page(request, ended)
    if _role_error(session.key):
        return _role_page(request, session)
    return _page(request, state, session, status=200)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, state: ServiceDep) -> Response:
    """Check the pasted API key; on success start a session (its id in the cookie) and go to the form."""
    form = await _read_form(request)
    if form is None:
        return _too_large(request)
    if not _token_ok(request, form, request.cookies.get(PRESESSION_COOKIE), SIGN_IN_PURPOSE):
        return _csrf_refused(request)
    token = form.get("api_key").strip()
    try:
        key = await run_in_threadpool(authenticate, state.keys, token, ROLES)
    except AuthError:
        log.info("page sign-in refused: invalid or revoked key")
        message = ("api_key: not a valid, active API key; paste the whole key as printed by "
                   "'response-model keys create' (it starts with rm_)") if token else "api_key: required"
        return _render(request, "signin.html", 401, session=None, message=None, error=message,
                       lifetimes=_lifetimes(request))
    session_id = await run_in_threadpool(_new_session, state, request.cookies.get(SESSION_COOKIE), key)
    log.info("key %s (%s) signed in to the page", key.key_id, key.role)
    response = _redirect(request)
    _set_cookie(response, request, SESSION_COOKIE, session_id)  # a new id at every sign-in: none can be planted
    _forget_cookie(response, PRESESSION_COOKIE)
    return response


def _new_session(state: ServiceState, previous: str | None, key: KeyInfo) -> str:
    """End the browser's previous session, if any, and return the id of a new one for ``key``."""
    state.sessions.end(previous)
    return state.sessions.start(key)


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, state: ServiceDep) -> Response:
    """End the session on the server (its cookie is worthless from now on) and forget the cookie."""
    form = await _read_form(request)
    if form is None:
        return _too_large(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    if not _token_ok(request, form, session_id, PAGE_PURPOSE):  # also for a session already expired
        return _csrf_refused(request)
    await run_in_threadpool(state.sessions.end, session_id)
    response = _redirect(request)
    _forget_cookie(response, SESSION_COOKIE)
    return response


@router.post("/", response_class=HTMLResponse)
async def submit(request: Request, state: ServiceDep) -> HTMLResponse:
    """Validate the form (or pasted JSON), predict, audit, and render the result or the errors."""
    form = await _read_form(request)
    if form is None:
        return _too_large(request)
    return await run_in_threadpool(_submit, request, state, form)


def _admitted(request: Request, state: ServiceState, form: Form) -> PageSession | HTMLResponse:
    """Return the session of a submitted form, or the audited refusal: no session (401), a wrong CSRF
    token or a role that may not estimate (403)."""
    try:
        session = _resume(request, state)
    except SessionEnded as ended:
        record_rejection(state.trail, state.holder.current, PAGE_ENDPOINT, 401, None, None, None,
                         {"error": str(ended)})
        return _signed_out_page(request, ended)
    if not _token_ok(request, form, session.session_id, PAGE_PURPOSE):
        record_rejection(state.trail, state.holder.current, PAGE_ENDPOINT, 403, session.key, None, None,
                         {"error": "CSRF token missing or wrong"})
        return _csrf_refused(request)
    refusal = _role_error(session.key)
    if refusal:
        record_rejection(state.trail, state.holder.current, PAGE_ENDPOINT, 403, session.key, None, None,
                         {"error": refusal})
        return _role_page(request, session)
    return session


def _submit(request: Request, state: ServiceState, form: Form) -> HTMLResponse:
    """Return the page answering a submitted form: the result, the form with its errors beside the fields,
    or the refusal (sign-in, CSRF, role); every outcome but a model still loading is audited."""
    session = _admitted(request, state, form)
    if isinstance(session, HTMLResponse):
        return session
    key = session.key
    loaded = state.holder.current
    if loaded is None:
        return _render(request, "message.html", 503, title="Not ready", session=session,
                       message="The model is still loading; try again in a minute.")

    source = "json" if form.get("source") == "json" else "fields"
    chosen = form.getlist("regimens")
    raw_id = form.get("patient_id").strip() or None
    patient, entered = patient_from_fields(form)
    json_text = _without_ids(form.get("patient_json"))
    errors: list[dict[str, Any]] = []
    body: Any = {"patient": patient, "regimens": chosen}
    if source == "json":
        body, json_errors = _body_from_json(form.get("patient_json"), chosen)
        errors += json_errors
        raw_id = raw_id or raw_patient_id(body)
    if raw_id and isinstance(body, dict) and "patient_id" not in body:
        body["patient_id"] = raw_id
    if isinstance(body, dict) and not body.get("regimens") and "regimens" in body:
        errors.append({"field": "regimens", "value": [], "message": "regimens: none chosen; tick at least one"})
    most = LIMITS.items_of("regimens")
    if len(chosen) > most:  # a forged form; judged once, not regimen by regimen (a bounded answer)
        errors.append({"field": "regimens", "value": None,
                       "message": f"regimens: {len(chosen)} ticked; at most {most} accepted"})
        if isinstance(body, dict):
            body["regimens"] = None
    if body is not None and not errors:
        with suggestions_at_most(SUGGESTED_PER_REQUEST):
            errors = request_errors(body)
    if not errors:
        status, answer = predict_one(loaded, state.trail, PredictionRequest.model_validate(body), key, PAGE_ENDPOINT)
        if status == 500:
            return _render(request, "message.html", 500, title="Prediction failed", session=session,
                           message=answer["detail"])
        if status == 200:
            return _page(request, state, session, 200, entered=entered, chosen=chosen, source=source,
                         json_text=json_text, result=_result_view(answer))
        errors = answer["errors"]  # already audited
    else:
        digest = _digest(body, form.get("patient_json"))
        record_rejection(state.trail, loaded, PAGE_ENDPOINT, 422, key, body, digest, {"errors": errors})
    shown: dict[str, list[str]] = {}
    for error in errors:
        message = error["message"]
        if raw_id and raw_id in message:
            message = message.replace(raw_id, "…")
        shown.setdefault(_form_target(error["field"], source), []).append(message)
    return _page(request, state, session, 422, entered=entered, chosen=chosen, source=source, json_text=json_text,
                 errors=shown)


def _body_from_json(text: str, chosen: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    """(request body, errors) from the pasted JSON: a patient record, or a whole prediction request."""
    if not text.strip():
        return None, [{"field": "patient_json", "value": None,
                       "message": "patient_json: empty; paste a patient record as JSON, or use the fields"}]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return None, [{"field": "patient_json", "value": None,
                       "message": f"patient_json: not valid JSON: {error.msg} at line {error.lineno}, "
                                  f"column {error.colno}"}]
    except (ValueError, RecursionError):  # e.g. an integer of thousands of digits: judged below
        value = None
    # the limits of the JSON API (depth, lengths, digits, duplicate keys, control characters)
    problems = body_errors(text.encode("utf-8", "surrogatepass"))
    if problems:
        return None, [{"field": "patient_json", "value": None, "message": f"patient_json: {p['message']}"}
                      for p in problems]
    if not isinstance(value, dict):
        return None, [{"field": "patient_json", "value": None,
                       "message": f"patient_json: expected a JSON object (a patient record), "
                                  f"not {type(value).__name__}"}]
    if "patient" in value:  # a whole request body, as for POST /v1/predictions
        body = dict(value)
        if body.get("regimens") is None:
            body["regimens"] = chosen
        return body, []
    return {"patient": value, "regimens": chosen}, []


def _without_ids(text: str) -> str:
    """The pasted JSON to show again, without any patient_id (identifiers are never written back)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text  # not JSON (or nested too deeply): shown as entered, so that it can be corrected
    if not isinstance(value, dict):
        return text
    removed = False
    for holder in (value, value.get("patient")):
        if isinstance(holder, dict) and "patient_id" in holder:
            del holder["patient_id"]
            removed = True
    return json.dumps(value, indent=2, ensure_ascii=False) if removed else text


def _digest(body: Any, text: str) -> str | None:
    if body is not None:
        try:
            return input_digest(body)
        except Exception:  # noqa: BLE001 - NaN and the like: digest the text instead
            pass
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text else None


# -- rendering ------------------------------------------------------------------------------------


def _page(request: Request, state: ServiceState, session: PageSession, status: int, *,
          entered: dict[str, str] | None = None, chosen: list[str] | None = None, source: str = "fields",
          json_text: str = "", errors: dict[str, list[str]] | None = None,
          result: dict[str, Any] | None = None) -> HTMLResponse:
    """Return the patient form (as entered, with errors and the result when given), or 503 while no model is loaded."""
    loaded = state.holder.current
    if loaded is None:
        return _render(request, "message.html", 503, title="Not ready", session=session,
                       message="The model is still loading; try again in a minute.")
    regimens = [{"name": r.name, "label": r.label, "regimen_class": r.regimen_class}
                for r in loaded.bundle.candidate_regimens()]
    values = {f.name: f.default for f in form_fields().values()}
    if entered is not None:
        values.update(entered)
    return _render(
        request, "page.html", status, session=session, groups=form_groups(), values=values,
        chosen=set(chosen) if chosen is not None else {r["name"] for r in regimens}, regimens=regimens,
        errors=errors or {}, source=source, json_text=json_text, result=result,
        model={"name": loaded.name, "version": loaded.version, "label": loaded.bundle.metadata.get("label")},
    )


CHART_WIDTH = 560
CHART_LABEL_WIDTH = 260
CHART_ROW = 24
CHART_LINE = 13  # one line of a wrapped label (11px text)
CHART_LABEL_CHARS = 38  # a label is wrapped onto lines of at most this many characters, never cut
CHART_TOP = 8


def chart_label(c: dict[str, Any]) -> str:
    """The text beside one bar: the term's label and the patient's values; for the not-recorded term
    the number of inputs (each is listed in full under the chart)."""
    if c.get("term") == "not_recorded":
        n = len(c.get("missing") or [])
        return f"{c['label']}: {n} input{'s' if n != 1 else ''}, listed below"
    return c["text"]


def contribution_chart(contributions: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of one explanation chart (SVG user units): a signed horizontal bar per explanation
    term, from a zero line, longest = the largest absolute contribution; each row labelled with the
    term and the patient's values with units, wrapped onto as many lines as it needs."""
    largest = max((abs(c["contribution"]) for c in contributions), default=0.0) or 1.0
    margin = 48  # room for the number beside a bar
    half = (CHART_WIDTH - CHART_LABEL_WIDTH - 2 * margin) / 2
    zero = CHART_LABEL_WIDTH + margin + half
    bars, y = [], CHART_TOP
    for c in contributions:
        value = float(c["contribution"])
        length = max(1.0, abs(value) / largest * half)
        label = chart_label(c)
        # a number stays on the line of its unit (a no-break space, drawn as a space)
        kept = re.sub(r"(\d) (?=\S)", "\\1\u00a0", label)
        lines = textwrap.wrap(kept, CHART_LABEL_CHARS, break_on_hyphens=False) or [label]
        row = max(CHART_ROW, CHART_LINE * len(lines) + 8)
        middle = y + row / 2
        first = middle - CHART_LINE * (len(lines) - 1) / 2
        bars.append({
            "x": zero if value > 0 else zero - length, "y": y, "width": length, "height": CHART_ROW - 8,
            "bar_y": middle - (CHART_ROW - 8) / 2, "positive": value > 0, "value": value, "text_y": middle,
            "value_x": zero + length + 4 if value > 0 else zero - length - 4, "label": label,
            "lines": [{"text": t, "y": first + k * CHART_LINE} for k, t in enumerate(lines)],
            "full": f"{label}: {c['direction']}",
        })
        y += row
    return {"width": CHART_WIDTH, "height": max(y, CHART_TOP + CHART_ROW) + CHART_TOP, "zero": zero,
            "label_x": CHART_LABEL_WIDTH - 6, "bars": bars}


def _result_view(answer: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one prediction answer."""
    labels = {r["regimen"]: r["label"] for r in answer["regimens"]}
    charts = []
    for it in answer["regimens"]:
        per_outcome = [(o, contribution_chart(it["explanations"][o]),
                        next((c for c in it["explanations"][o] if c.get("term") == "not_recorded"), None))
                       for o in OUTCOMES if it["explanations"].get(o)]
        if per_outcome:
            charts.append({"regimen": it["regimen"], "label": it["label"], "rank": it["rank"],
                           "eligible": it["eligible"], "outcomes": per_outcome})
    tests = [{**t, "regimen_label": labels.get(t["regimen"], t["regimen"])} for t in answer["genomic_tests"]]
    return {**answer, "eligible": [it for it in answer["regimens"] if it["eligible"] and it["rank"] is not None],
            "charts": charts,
            "genomic_tests": tests, "regimen_labels": labels,
            "scale": next((c["scale"] for it in answer["regimens"] for o in OUTCOMES
                           for c in it["explanations"].get(o, [])), None)}
