"""Packed stored forms of a record's two large JSON fields, ``outputs`` and ``explanations`` (issue 14 point 9).

An accepted one-patient prediction's explanations hold every SHAP value of every regimen × outcome
and the terms shown; stored as JSON text they took ~190 KB per record. They are stored packed, still
inside the field's JSON text, so the record hash covers them:

- ``outputs``: ``{"format": "zlib-json/1", "json": base64(zlib(the stored JSON text))}``.
- ``explanations``: ``{"format": "packed-f64/3", "json": base64(zlib(JSON of the rest)),
  "values": base64(zlib(every SHAP value list as little-endian float64))}`` — the rest being the
  compact form (:func:`~.chain.compact_explanations`, ``"feature-lists/1"``) without the lists of
  floats, plus where each list goes back.

Lossless: :func:`unpack_field` gives exactly the value that the plain stored text read back gives
(same numbers bit for bit, same types, same key order), so every reader's answer is unchanged.
Records written before this (plain JSON text) read as they are. zlib (RFC 1950, level 6) and base64 are
in Python's standard library and every platform's tools.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

import numpy as np

try:  # optional: faster on an explanation's thousands of numbers (see chain.stored_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - the json module does it
    _orjson = None

OUTPUTS_FORMAT = "zlib-json/1"
EXPLANATIONS_FORMAT = "packed-f64/3"
_COMPACT_FORMAT = "feature-lists/1"  # chain.EXPLANATIONS_FORMAT (not imported: chain imports this module)
# zlib level 6: within a few per cent of LZMA2's size on a record at a sixth of its time (the record is
# packed before the answer is sent, so its cost is on every prediction's latency)
_LEVEL = 6
PACKED_FIELDS = ("outputs", "explanations")


class PackingError(ValueError):
    """A packed field cannot be unpacked (damaged or of an unknown shape)."""


def _squeeze(data: bytes) -> str:
    """``data`` compressed (zlib) as base64 text."""
    return base64.b64encode(zlib.compress(data, _LEVEL)).decode("ascii")


def _unsqueeze(text: Any) -> bytes:
    """The bytes of a :func:`_squeeze` text; raises PackingError when it is not one."""
    if not isinstance(text, str):
        raise PackingError("a packed part is not text")
    try:
        return zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise PackingError(f"a packed part cannot be decompressed ({exc})") from None


def _dumps(value: Any) -> str:
    """JSON text with sorted keys, no spaces, of a value read from JSON (orjson when installed: its
    numbers are written differently, e.g. 1e-05 as 0.00001, but read back the same)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value, option=_orjson.OPT_SORT_KEYS).decode("utf-8")
        except (TypeError, ValueError, OverflowError):  # e.g. an int beyond 64 bits
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _parse(text: str | bytes) -> Any:
    """The JSON value of ``text`` (orjson when installed and it can; the json module otherwise)."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except ValueError:  # e.g. an int beyond 64 bits, which the json module reads
            pass
    return json.loads(text)


def _float_lists(compact: dict[str, Any]) -> tuple[list[list[Any]], list[float]]:
    """Take every explanation's ``values`` out of the compact form (changed in place) when it is a
    list of floats; returns ([[regimen, outcome, count], …], the floats in that order)."""
    where, floats = [], []
    for regimen, outcomes in (compact.get("regimens") or {}).items():
        for outcome, explanation in (outcomes or {}).items() if isinstance(outcomes, dict) else ():
            values = explanation.get("values") if isinstance(explanation, dict) else None
            if isinstance(values, list) and values and set(map(type, values)) == {float}:  # floats only
                where.append([regimen, outcome, len(values)])
                floats.extend(values)
                del explanation["values"]
    return where, floats


def pack_field(name: str, text: str | None) -> str | None:
    """The packed stored text of field ``name`` from its plain stored JSON text (other fields, and
    None, as they are)."""
    if text is None or name not in PACKED_FIELDS:
        return text
    if name == "outputs":
        return _dumps({"format": OUTPUTS_FORMAT, "json": _squeeze(text.encode("utf-8"))})
    value = _parse(text)  # what a reader of the plain text would get: that is what must come back
    where, floats = [], []
    if isinstance(value, dict) and value.get("format") == _COMPACT_FORMAT:
        where, floats = _float_lists(value)
    rest = _dumps({"value": value, "values_at": where})
    packed = {"format": EXPLANATIONS_FORMAT, "json": _squeeze(rest.encode("utf-8")),
              "values": _squeeze(np.asarray(floats, dtype="<f8").tobytes())}
    return _dumps(packed)


def _is_packed(value: Any, fmt: str, keys: set[str]) -> bool:
    """True when ``value`` is a packed field of format ``fmt`` with exactly ``keys``."""
    return isinstance(value, dict) and value.get("format") == fmt and set(value) == keys


def unpack_field(name: str, value: Any) -> Any:
    """The value of field ``name`` as its plain stored text would read, from the parsed stored text
    (packed or, for records written before, plain: returned as it is). Raises PackingError."""
    if name == "outputs" and _is_packed(value, OUTPUTS_FORMAT, {"format", "json"}):
        return _loads(_unsqueeze(value["json"]))
    if name != "explanations" or not _is_packed(value, EXPLANATIONS_FORMAT, {"format", "json", "values"}):
        return value
    doc = _loads(_unsqueeze(value["json"]))
    floats = np.frombuffer(_unsqueeze(value["values"]), dtype="<f8")
    if not isinstance(doc, dict) or set(doc) != {"value", "values_at"}:
        raise PackingError("packed explanations of an unknown shape")
    restored, start = doc["value"], 0
    try:
        for regimen, outcome, count in doc["values_at"]:
            explanation = restored["regimens"][regimen][outcome]
            explanation["values"] = floats[start:start + count].tolist()
            if len(explanation["values"]) != count:
                raise ValueError(f"{count} values expected for {regimen} {outcome}")
            start += count
            restored["regimens"][regimen][outcome] = dict(sorted(explanation.items()))  # as the text had them
    except (KeyError, TypeError, ValueError) as exc:
        raise PackingError(f"packed explanations do not fit together ({exc})") from None
    if start != floats.size:
        raise PackingError(f"packed explanations hold {floats.size} values, their layout {start}")
    return restored


def _loads(data: bytes) -> Any:
    """JSON from UTF-8 bytes; raises PackingError."""
    try:
        return _parse(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackingError(f"a packed part is not JSON ({exc})") from None
