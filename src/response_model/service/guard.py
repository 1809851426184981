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
* **Media type** — on those endpoints a body must be sent as ``Content-Type: application/json`` (charset, if
  given, ``utf-8``) without a ``Content-Encoding``: anything else is refused with 415 naming what was sent.
  UTF-16 and UTF-32 bodies (which Python's ``json`` would detect and read), and a UTF-8 byte-order mark,
  are refused with 415 too.
* **Cost limits** (:data:`LIMITS`, all in this module) — nesting depth, characters of a string or key,
  items of a list (per field), characters of a number (checked before Python converts it: ``int()`` of
  a 4,300-digit number is slow, then raises) and JSON's non-numbers ``NaN``/``Infinity``: each refused
  with 422 naming the field and the limit. Larger bodies are checked in a worker thread.
* **Validation off the event loop** — a path may have a check (``checks``: the service validates
  ``POST /v1/predictions`` with the record's own messages) run in a worker thread: an invalid body is
  refused from here, and FastAPI's own validation, on the loop, sees only valid ones; it computes no
  gene-symbol suggestions either (:func:`response_model.genes.suggestions_at_most`).
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
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from response_model.genes import suggestions_at_most

MAX_BODY_ENV = "RESPONSE_MODEL_MAX_BODY_BYTES"
MAX_BATCH_BODY_ENV = "RESPONSE_MODEL_MAX_BATCH_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_BATCH_BODY_BYTES = 2 * 1024 * 1024
BATCH_PATH = "/v1/predictions:batch"
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class Limits:
    """What one JSON body may hold, whatever its size (the size limits are :func:`body_limits`)."""

    #: containers (objects and lists) inside one another; a batch row's alteration sits at depth 6
    depth: int = 8
    #: characters of one string or key (fields have their own, smaller limits in the schema)
    string_chars: int = 256
    #: characters of one number as written, sign and exponent included
    number_chars: int = 24
    #: items of a list, by field name (the batch's ``patients`` has its own limit, 413, in the router;
    #: ``outcomes``: POST /v1/outcomes/batch)
    list_items: tuple[tuple[str, int], ...] = (("alterations", 500), ("regimens", 50), ("outcomes", 1_000))
    #: items of any other list
    other_list_items: int = 100
    #: bodies larger than this are checked in a worker thread instead of on the event loop
    inline_bytes: int = 16 * 1024

    def items_of(self, field: str) -> int | None:
        """The most items a list named ``field`` may hold (None: no limit here)."""
        if field == "patients":
            return None
        return dict(self.list_items).get(field, self.other_list_items)


LIMITS = Limits()

Reject = Callable[[dict, bytes | None, int, list[dict[str, Any]]], Awaitable[Callable]]
Check = Callable[[Any], list[dict[str, Any]]]


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


class _Unconverted:
    """A number (or ``NaN``/``Infinity``) the parser was told not to convert; the limit walk reports it."""

    def __init__(self, text: str, constant: bool = False) -> None:
        self.text, self.constant = text, constant


def _int(text: str) -> Any:
    return _Unconverted(text) if len(text) > LIMITS.number_chars else int(text)


def _float(text: str) -> Any:
    return _Unconverted(text) if len(text) > LIMITS.number_chars else float(text)


def _constant(text: str) -> _Unconverted:
    return _Unconverted(text, constant=True)


#: characters no field of a request needs: C0 and C1 controls, DEL, and surrogates (never characters)
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _char_error(where: str, text: str) -> str | None:
    """The message for a string holding a control character or a lone surrogate, or None."""
    found = _BAD_CHARS.search(text)
    if found is None:
        return None
    ch = found.group()
    if ch == "\x00":
        what = "a NUL character (\\u0000)"
    elif "\ud800" <= ch <= "\udfff":
        what = f"an unpaired surrogate (\\u{ord(ch):04x}), which is not a character"
    else:
        what = f"U+{ord(ch):04X} {unicodedata.name(ch, 'a control character')} (a control character)"
    return f"{where}: the text holds {what} at position {found.start()}; remove it " \
           "(no field of a patient record needs it)"


def _string_error(where: str, text: str, kind: str) -> str | None:
    if len(text) > LIMITS.string_chars:
        return f"{where}: {kind} of {len(text)} characters; at most {LIMITS.string_chars} accepted"
    return _char_error(where, text)


def _number_error(where: str, number: _Unconverted) -> str:
    if number.constant:
        return f"{where}: {number.text} is not a JSON number; expected a finite number"
    return (f"{where}: a number written with {len(number.text)} characters ({number.text[:12]!r}…); at most "
            f"{LIMITS.number_chars} accepted (no field of a prediction request needs more)")


def _container_error(where: str, key: str, value: dict | list, depth: int) -> str | None:
    if depth > LIMITS.depth:
        return f"{where}: nested {depth} levels deep; a prediction request nests at most {LIMITS.depth}"
    limit = LIMITS.items_of(key) if isinstance(value, list) else None
    if limit is not None and len(value) > limit:
        return f"{where}: {len(value)} items; at most {limit} accepted"
    return None


def _limit_error(value: Any) -> tuple[str, str] | None:
    """(dotted path, message) of the first thing in a parsed body over :data:`LIMITS` or holding a
    character no request needs; None when there is none. Iterative: no depth breaks it."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(value, (), 0)]
    while stack:
        item, path, depth = stack.pop()
        where = ".".join(path) or "body"
        if isinstance(item, str):
            message = _string_error(where, item, "a text")
        elif isinstance(item, _Unconverted):
            message = _number_error(where, item)
        elif isinstance(item, (dict, list)):
            message = _container_error(where, path[-1] if path else "body", item, depth + 1)
            if message is None and isinstance(item, dict):
                for key, child in item.items():
                    key_error = _string_error(f"{where}.<key>" if path else "<key>", key, "a field name")
                    if key_error:
                        return f"{where}", key_error
                    stack.append((child, (*path, str(key)), depth + 1))
            elif message is None:
                stack.extend((child, (*path, str(i)), depth + 1) for i, child in enumerate(item))
        else:
            message = None
        if message:
            return where, message
    return None


_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"),
         (b"\xff\xfe", "UTF-16"), (b"\xef\xbb\xbf", "UTF-8 with a byte-order mark"))


def _encoding_error(raw: bytes) -> str | None:
    """The message for a body in UTF-16 or UTF-32 (by its byte-order mark or its NUL bytes, as Python's
    ``json`` would detect it), or with a UTF-8 byte-order mark; None for anything else."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return f"body: {name} text (it starts with the byte-order mark {bom.hex(' ')}); send JSON encoded as " \
                   "UTF-8, without a byte-order mark"
    if b"\x00" in raw[:4]:
        name = "UTF-32" if raw[:4].count(b"\x00") == 3 else "UTF-16"
        return f"body: {name} text (NUL bytes among its first four); send JSON encoded as UTF-8"
    return None


def _parse(raw: bytes) -> Any:
    """The JSON value of ``raw`` (strict UTF-8, duplicate keys refused, long numbers left unconverted)."""
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates, parse_int=_int,
                      parse_float=_float, parse_constant=_constant)


def body_errors(raw: bytes) -> list[dict[str, Any]]:
    """Field-level errors of a JSON request body that the JSON parser would not report or would report
    unclearly: not UTF-8 (or UTF-16/32), not JSON (with line and column), nested too deeply, a key
    repeated in one object (named by its dotted path, e.g. ``patient.albumin``), a string, list or number
    over :data:`LIMITS`, ``NaN``, a control character or an unpaired surrogate in a string. Empty when
    the body is well-formed JSON within the limits (the request models judge its content)."""
    return _parsed_body(raw)[1]


def _parsed_body(raw: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """``(JSON value, [])`` of a well-formed body within the limits, else ``(None, errors)`` with the
    errors of :func:`body_errors`; the body is parsed once."""
    encoding = _encoding_error(raw)
    if encoding:
        return None, [{"field": "body", "value": None, "message": encoding}]
    try:
        value = _parse(raw)
    except _Duplicate as dup:
        try:
            path = _path_of_duplicate(json.loads(raw, object_pairs_hook=_mark_duplicates, parse_int=_int))
        except (ValueError, RecursionError):  # pragma: no cover - parsed once already
            path = None
        return None, [duplicate_key_error(".".join(path or (dup.key,)))]
    except UnicodeDecodeError as error:
        return None, [{"field": "body", "value": None,
                       "message": f"body: not UTF-8 text (byte 0x{raw[error.start]:02x} at position "
                                  f"{error.start}); send JSON encoded as UTF-8"}]
    except json.JSONDecodeError as error:
        return None, [{"field": "body", "value": None,
                       "message": f"body: not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
                                  f"(character {error.pos})"}]
    except RecursionError:
        return None, [{"field": "body", "value": None,
                       "message": "body: JSON nested too deeply to be a prediction request"}]
    found = _limit_error(value)
    if found:
        path, message = found
        return None, [{"field": path, "value": None, "message": message}]
    return value, []


def duplicate_key_error(path: str) -> dict[str, Any]:
    """The field-level error of a key given twice in one JSON object."""
    key = path.rsplit(".", 1)[-1]
    return {"field": path, "value": None,
            "message": f"{path}: the key {key!r} appears more than once in the same JSON object; "
                       "give each field once (a JSON parser would silently keep only the last value)"}


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def media_error(scope: dict) -> dict[str, Any] | None:
    """The 415 error of a body not sent as ``application/json`` in UTF-8, uncompressed; None when it is."""
    encoding = _header(scope, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return {"field": "Content-Encoding", "value": encoding[:40],
                "message": f"Content-Encoding: {encoding[:40]!r} is not accepted; send the JSON body uncompressed, "
                           "without a Content-Encoding header"}
    sent = _header(scope, b"content-type")
    if sent is None:
        return {"field": "Content-Type", "value": None,
                "message": "Content-Type: none given; expected application/json"}
    media, _, params = sent.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media.strip().lower() != "application/json":
        return {"field": "Content-Type", "value": sent[:80],
                "message": f"Content-Type: {media.strip()[:80]!r} is not accepted; expected application/json"}
    if charset not in (None, "utf-8", "utf8"):
        return {"field": "Content-Type", "value": sent[:80],
                "message": f"Content-Type: charset {charset[:40]!r} is not accepted; expected utf-8 (or no charset)"}
    return None


class BodyGuard:
    """ASGI middleware: body size limits (413) before parsing; media type (415); encoding, duplicate JSON
    keys and the cost limits of :data:`LIMITS` (422).

    ``reject(scope, body, status, errors)`` returns the ASGI response to send (``body`` is None when
    the body was not read). ``checks``: per path, a function of the parsed body returning its field-level
    errors, run in a worker thread before the app sees the body: a body it refuses is answered 422 from
    here, so the validation FastAPI then runs on the event loop only ever sees valid (cheap) bodies.
    ``json_paths``: the paths whose JSON bodies are checked (media type, encoding, duplicate keys,
    limits). ``limits``: as :func:`body_limits` (read once, at construction, by default).
    """

    def __init__(self, app, reject: Reject, json_paths: Collection[str] = (), limits: dict[str, int] | None = None,
                 checks: Mapping[str, Check] | None = None):
        self.app = app
        self.reject = reject
        self.json_paths = frozenset(json_paths)
        self.limits = dict(limits or body_limits())
        self.checks = dict(checks or {})

    def _judge(self, path: str, body: bytes) -> list[dict[str, Any]]:
        """The errors of ``body`` (:func:`body_errors`, then the check of ``path`` on the JSON value parsed there)."""
        value, errors = _parsed_body(body)
        check = self.checks.get(path)
        if errors or check is None:
            return errors
        return check(value)

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
        if body and path in self.json_paths:
            media = media_error(scope)
            if media is None and (encoding := _encoding_error(body)) is not None:
                # a body in another encoding than UTF-8 is a media type this service does not take
                media = {"field": "body", "value": None, "message": encoding}
            if media is not None:
                await self._refuse(scope, receive, send, body, 415, [media])
                return
            inline = len(body) <= LIMITS.inline_bytes and path not in self.checks
            errors = self._judge(path, body) if inline else await run_in_threadpool(self._judge, path, body)
            if errors:
                await self._refuse(scope, receive, send, body, 422, errors)
                return
        # what FastAPI validates on the event loop computes no gene-symbol suggestions: the 422 texts
        # that carry them are made in a worker thread (response_model.service.errors)
        with suggestions_at_most(0):
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
