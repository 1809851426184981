"""Request-body guard of the prediction service (a pure ASGI middleware).

* **Size limits, before parsing** — a request whose ``Content-Length`` exceeds the limit of its
  endpoint is refused with 413 before a byte of its body is read; a body sent without a length
  (chunked) is counted while it streams in and refused as soon as it passes the limit. Limits:
  ``$RESPONSE_MODEL_MAX_BATCH_BODY_BYTES`` for ``POST /v1/predictions:batch`` (default 2 MiB — a
  full batch of 1,000 patients like the OpenAPI example takes about 0.9 MiB) and
  ``$RESPONSE_MODEL_MAX_BODY_BYTES`` for every other endpoint (default 256 KiB — one patient takes
  about 1 KiB).
* **Duplicate keys** — Python's ``json`` keeps the last of two equal keys of an object silently, so
  ``{"albumin": 3.5, "albumin": 35}`` would be scored with 35 and nobody told. On the JSON endpoints
  given to the guard, a body with a key repeated in one object is refused with 422 naming the key.
* **Malformed bodies** — on those endpoints, a body that is not JSON (line and column named), not
  UTF-8, nested too deeply for the parser, or holding a NUL character or an unpaired surrogate (which
  no database text column accepts) is refused with 422 and a clear message, never a 400 or a 500.

The guard does not answer by itself: it hands the refusal to ``reject(scope, body, status, errors)``
(:func:`response_model.service.errors.on_guard_refusal` in the service), which authenticates the caller
first and records the refusal in the audit trail, like every other rejected prediction request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Collection
from typing import Any

MAX_BODY_ENV = "RESPONSE_MODEL_MAX_BODY_BYTES"
MAX_BATCH_BODY_ENV = "RESPONSE_MODEL_MAX_BATCH_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_BATCH_BODY_BYTES = 2 * 1024 * 1024
BATCH_PATH = "/v1/predictions:batch"
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

Reject = Callable[[dict, bytes | None, int, list[dict[str, Any]]], Awaitable[Callable]]


def _env_bytes(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r}: expected a whole number of bytes") from None
    if value < 1:
        raise ValueError(f"${name}={value}: expected a positive number of bytes")
    return value


def body_limits() -> dict[str, int]:
    """The body size limits in bytes: ``{"batch": …, "other": …}`` (from the environment, else defaults)."""
    return {"batch": _env_bytes(MAX_BATCH_BODY_ENV, DEFAULT_MAX_BATCH_BODY_BYTES),
            "other": _env_bytes(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)}


def _size(n: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n} bytes"


def too_large_error(method: str, path: str, limit: int, size: int | None) -> dict[str, Any]:
    """The field-level error of a body over ``limit`` bytes (``size``: its declared length, if known)."""
    given = f"{size} bytes" if size is not None else "more than that"
    hint = " (split the batch into smaller requests)" if path == BATCH_PATH else ""
    return {"field": "body", "value": size,
            "message": f"body: {given} is too large; {method} {path} accepts at most {limit} bytes "
                       f"({_size(limit)}){hint}"}


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


class _Marked(dict):
    duplicate: str | None = None


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> _Marked:
    obj = _Marked(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.duplicate = key
                break
            seen.add(key)
    return obj


def _path_of_duplicate(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    if isinstance(value, _Marked):
        if value.duplicate is not None:
            return (*path, value.duplicate)
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, child in items:
        found = _path_of_duplicate(child, (*path, key))
        if found is not None:
            return found
    return None


def _bad_text(value: Any, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(dotted path, what) of the first string (key or value) holding a NUL character or a lone surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return ".".join(path) or "body", "a NUL character (\\u0000)"
        for ch in value:
            if "\ud800" <= ch <= "\udfff":
                return ".".join(path) or "body", f"an unpaired surrogate (\\u{ord(ch):04x}), which is not a character"
        return None
    if isinstance(value, dict):
        for key, child in value.items():
            found = _bad_text(key, (*path, "<key>")) or _bad_text(child, (*path, str(key)))
            if found:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found = _bad_text(child, (*path, str(i)))
            if found:
                return found
    return None


def body_errors(raw: bytes) -> list[dict[str, Any]]:
    """Field-level errors of a JSON request body that the JSON parser would not report or would report
    unclearly: not JSON (with line and column), not UTF-8, nested too deeply, a key repeated in one object
    (named by its dotted path, e.g. ``patient.albumin``), a NUL character or an unpaired surrogate in a
    string. Empty when the body is well-formed JSON (the request models judge its content)."""
    try:
        value = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as dup:
        try:
            path = _path_of_duplicate(json.loads(raw, object_pairs_hook=_mark_duplicates))
        except (ValueError, RecursionError):  # pragma: no cover - parsed once already
            path = None
        return [duplicate_key_error(".".join(path or (dup.key,)))]
    except UnicodeDecodeError as error:
        return [{"field": "body", "value": None,
                 "message": f"body: not UTF-8 text (byte 0x{raw[error.start]:02x} at position {error.start}); "
                            "send JSON encoded as UTF-8"}]
    except json.JSONDecodeError as error:
        return [{"field": "body", "value": None,
                 "message": f"body: not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
                            f"(character {error.pos})"}]
    except RecursionError:
        return [{"field": "body", "value": None, "message": "body: JSON nested too deeply to be a prediction request"}]
    except ValueError as error:  # e.g. an encoding json cannot detect
        return [{"field": "body", "value": None, "message": f"body: not valid JSON ({error})"}]
    if b"\\u" in raw:  # NUL and surrogates can only arrive escaped
        found = _bad_text(value)
        if found:
            path, what = found
            return [{"field": path, "value": None,
                     "message": f"{path}: the text holds {what}; remove it (no field of a patient record needs it)"}]
    return []


def duplicate_key_error(path: str) -> dict[str, Any]:
    """The field-level error of a key given twice in one JSON object."""
    key = path.rsplit(".", 1)[-1]
    return {"field": path, "value": None,
            "message": f"{path}: the key {key!r} appears more than once in the same JSON object; "
                       "give each field once (a JSON parser would silently keep only the last value)"}


def _is_json(scope: dict) -> bool:
    """True when the body is read as JSON: a JSON media type, or none given (FastAPI parses it as JSON then)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


class BodyGuard:
    """ASGI middleware: body size limits (413) before parsing, and no duplicate JSON keys (422).

    ``reject(scope, body, status, errors)`` returns the ASGI response to send (``body`` is None when
    the body was not read). ``json_paths``: the paths whose JSON bodies are checked for duplicate
    keys. ``limits``: as :func:`body_limits` (read once, at construction, by default).
    """

    def __init__(self, app, reject: Reject, json_paths: Collection[str] = (), limits: dict[str, int] | None = None):
        self.app = app
        self.reject = reject
        self.json_paths = frozenset(json_paths)
        self.limits = dict(limits or body_limits())

    def limit_for(self, path: str) -> int:
        """The body size limit in bytes of ``path``."""
        return self.limits["batch"] if path == BATCH_PATH else self.limits["other"]

    async def _refuse(self, scope, receive, send, body: bytes | None, status: int, errors: list[dict]) -> None:
        response = await self.reject(scope, body, status, errors)
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.limit_for(path)
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:  # the HTTP server refuses these before we see them
                    declared = None
                break
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, None, 413, [too_large_error(method, path, limit, declared)])
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, None, 413, [too_large_error(method, path, limit, None)])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and path in self.json_paths and _is_json(scope):
            errors = body_errors(body)
            if errors:
                await self._refuse(scope, receive, send, body, 422, errors)
                return
        await self.app(scope, replay(body, receive), send)


def replay(body: bytes | None, receive=None):
    """An ASGI ``receive`` that yields ``body`` as one message, then defers to ``receive`` (if given:
    it reports the client's disconnect) or reports a disconnect."""
    sent = False

    async def _receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        if receive is not None:
            return await receive()
        return {"type": "http.disconnect"}

    return _receive
