"""Bounded stored detail: what an audit record keeps of a rejected request's values.

A rejection's ``detail`` (field-level errors with the ``value`` that was refused, messages, …) comes
from the client, so it may be huge, deeply nested or hold text that cannot be stored (lone
surrogates). :func:`bounded_detail` (which :func:`~.chain.stored_content` applies to every record's
``detail``) turns it into a small, storable JSON value: an error's ``value`` is kept as it is only
when it is a short scalar, else replaced by its summary (:func:`value_summary`: type, length,
SHA-256 of its canonical JSON, a short preview); every other string is cut to :data:`MAX_TEXT`
characters (with its length and digest), lists to :data:`MAX_ITEMS` items (with the number left
out), nesting to :data:`MAX_DEPTH` levels. Nothing is dropped without saying so. The walk is
bounded, so no value can exhaust the stack here or in a reader later.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 6  # levels of a detail kept (errors list → error → value is 3)
MAX_ITEMS = 50  # list items and object members kept per level
MAX_TEXT = 300  # characters of a string kept (messages are ~100–200)
MAX_VALUE_TEXT = 64  # a refused string value longer than this is summarised
PREVIEW = 24  # characters of a summarised value shown
MAX_INT_DIGITS = 18

SUMMARY_KEYS = ("type", "length", "sha256", "preview")


def _safe_text(text: str) -> str:
    """``text`` with lone surrogates and control characters (other than tab/newline) written as
    ``\\uXXXX`` escapes, so that it encodes as UTF-8 and shows what was sent."""
    if text.isprintable() and text.isascii():  # the common case: nothing to escape
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF or (code < 0x20 and ch not in "\t\n") or 0x7F <= code < 0xA0:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _type_name(value: Any) -> str:
    """The JSON type name of ``value`` (object, array, string, integer, number, boolean, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _digest(value: Any) -> str | None:
    """SHA-256 (hex) of ``value``'s canonical JSON (lone surrogates kept as they came); None when it
    has none (too deeply nested, not JSON)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (RecursionError, ValueError, TypeError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _int_digits(value: int) -> int:
    """The number of decimal digits of ``value`` (without converting huge ints to text)."""
    bits = abs(value).bit_length()
    if bits < 10_000:
        return len(str(abs(value)))
    return int(bits * math.log10(2)) + 1  # approximate by at most one digit; text conversion is refused


def value_summary(value: Any, hide: str | None = None) -> dict[str, Any]:
    """The stored summary of a refused value: ``{"type", "length", "sha256", "preview"}``.

    ``length``: characters of a string, digits of an integer, items of an array or object (None
    otherwise); ``sha256``: of its canonical JSON (None if it has none); ``preview``: its first
    :data:`PREVIEW` characters (strings, integers) with unprintable characters escaped, else None —
    and None for a string holding ``hide`` (the record's raw patient id: e.g. an over-long id).
    """
    kind, length, preview = _type_name(value), None, None
    if isinstance(value, str):
        length = len(value)
        preview = None if hide and hide in value else _safe_text(value[:PREVIEW])
    elif isinstance(value, int) and not isinstance(value, bool):
        length = _int_digits(value)
        preview = str(value)[:PREVIEW] if length < 4000 else None
    elif isinstance(value, (Mapping, list, tuple)):
        length = len(value)
    return {"type": kind, "length": length, "sha256": _digest(value), "preview": preview}


def _is_short_scalar(value: Any) -> bool:
    """True when a refused value is small enough to store as it is."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 10**MAX_INT_DIGITS
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_VALUE_TEXT and _safe_text(value) == value
    return False


def _bounded_text(text: str) -> Any:
    """A string as stored: as it is (unprintable characters escaped) up to :data:`MAX_TEXT`
    characters, else its first characters + "…" and a note of its length and digest."""
    if len(text) <= MAX_TEXT:
        return _safe_text(text)
    return f"{_safe_text(text[:MAX_TEXT])}… [{len(text)} characters, sha256 {_digest(text)}]"


def bounded_detail(detail: Any, depth: int = 0, hide: str | None = None) -> Any:
    """``detail`` as stored: JSON with every string, list and nesting level bounded (see the module).

    Returns a new value (``detail`` is not changed); a member named ``value`` that is not a short
    scalar becomes its :func:`value_summary` (no preview of a value holding ``hide``, the raw id).
    """
    if isinstance(detail, str):
        return _bounded_text(detail)
    if isinstance(detail, float) and not math.isfinite(detail):
        return str(detail)  # NaN and infinity have no JSON form: stored as text
    if detail is None or isinstance(detail, (bool, int, float)):
        return detail if _is_short_scalar(detail) else value_summary(detail, hide)
    if depth >= MAX_DEPTH:
        return {"truncated": "nested too deeply", **value_summary(detail, hide)}
    if isinstance(detail, Mapping):
        out: dict[str, Any] = {}
        for n, (key, value) in enumerate(detail.items()):
            if n == MAX_ITEMS:
                out["…"] = f"{len(detail) - MAX_ITEMS} more members left out"
                break
            key = _bounded_text(str(key))
            if key == "value" and not _is_short_scalar(value):
                out[key] = value_summary(value, hide)
            else:
                out[key] = bounded_detail(value, depth + 1, hide)
        return out
    if isinstance(detail, (list, tuple)):
        items = [bounded_detail(item, depth + 1, hide) for item in list(detail[:MAX_ITEMS])]
        if len(detail) > MAX_ITEMS:
            items.append({"truncated": f"{len(detail) - MAX_ITEMS} more items left out"})
        return items
    return bounded_detail(_plain(detail), depth, hide)


def _plain(value: Any) -> Any:
    """The plain JSON form of a value that is not JSON (numpy scalars and arrays, pydantic models,
    dates), or its text."""
    for method in ("item", "tolist"):  # numpy scalars, arrays
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    if callable(getattr(value, "model_dump", None)):
        return value.model_dump(mode="json")
    if callable(getattr(value, "isoformat", None)):
        return value.isoformat()
    return str(value)
