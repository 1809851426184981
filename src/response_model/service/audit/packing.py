"""Packed stored forms of a record's two large JSON fields, ``outputs`` and ``explanations`` (issue 14 point 9).

An accepted one-patient prediction's explanations hold every SHAP value of every regimen × outcome
and the terms shown; stored as JSON text they took ~190 KB per record. Since "packed-f64/4" both
fields go, packed together, into one binary row of the side table ``audit_blobs`` (content-addressed:
its key is the SHA-256 of its bytes); each field's stored text is only a reference,
``{"blob": sha256, "format": "zlib-json/2" | "packed-f64/4"}``. The record's MAC covers the reference,
so the blob's bytes are covered too: a reader recomputes the digest before using them, and
``audit verify`` checks every referenced blob (a changed or missing side row is reported). A binary
column spares the text encoding (base64 costs a third more). The blob holds three zlib streams (level 6):

- text: the outputs' stored JSON text, as it is, and the explanations' compact form
  (:func:`~.chain.compact_explanations`) without the SHAP values, each distinct ``terms`` map (as
  positions in the feature list) and each distinct entry of ``top`` (its ``contribution`` aside)
  written once — every regimen × outcome repeats them — texts that are derived from the entry's other
  fields (``"label: display"``, the missing labels joined) left out when they are, and where
  everything goes back; this stream starts from the preset dictionary of :mod:`.vocabulary`;
- the SHAP values, grouped by list length into matrices (one row per regimen × outcome), coded per
  column: one small integer per cell (uint8 up to 256 rows) indexing each column's distinct float64s
  (bit for bit, so -0.0 stays -0.0), in order of first appearance — the indices in one stream, the
  distinct values in another. A feature's SHAP value often repeats across regimens of the same class,
  and many are exactly 0.0.

Lossless: :func:`unpack_field` gives exactly the value that the plain stored text read back gives
(same numbers bit for bit, same types, same key order), so every reader's answer is unchanged.
Records of the formats before read as they did: plain JSON text; ``zlib-json/1`` and
``packed-f64/3`` (the same parts as base64 text inside the field itself). zlib (RFC 1950) is in
Python's standard library and every platform's tools.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from response_model.service.audit.vocabulary import PRESET

try:  # optional: faster on an explanation's thousands of numbers (see chain.stored_json)
    import orjson as _orjson
except ImportError:  # pragma: no cover - the json module does it
    _orjson = None

OUTPUTS_FORMAT = "zlib-json/2"
EXPLANATIONS_FORMAT = "packed-f64/4"
FORMATS = {"outputs": OUTPUTS_FORMAT, "explanations": EXPLANATIONS_FORMAT}
# the formats before side blobs: the packed parts as base64 text inside the field (still read)
INLINE_OUTPUTS_FORMAT, INLINE_EXPLANATIONS_FORMAT = "zlib-json/1", "packed-f64/3"
_COMPACT_FORMAT = "feature-lists/1"  # chain.EXPLANATIONS_FORMAT (not imported: chain imports this module)
# zlib level 6: within a few per cent of LZMA2's size on a record at a sixth of its time (the record is
# packed before the answer is sent, so its cost is on every prediction's latency)
_LEVEL = 6
PACKED_FIELDS = ("outputs", "explanations")
_DIGITS_AS_ZERO, _LONG_DIGITS = bytes.maketrans(b"123456789", b"000000000"), b"0" * 19
_WIDTHS = ((256, "<u1"), (65_536, "<u2"), (2**32, "<u4"))  # index type by rows (≥ a column's distinct values)


class PackingError(ValueError):
    """A packed field cannot be unpacked (damaged, of an unknown shape, or its side blob missing or changed)."""


def blob_digest(data: bytes) -> str:
    """The key of a side blob: the SHA-256 (hex) of its bytes."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# JSON helpers


def _dumps(value: Any) -> str:
    """JSON text with sorted keys, no spaces, of a value read from JSON (orjson when installed: its
    numbers are written differently, e.g. 1e-05 as 0.00001, but read back the same)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value, option=_orjson.OPT_SORT_KEYS).decode("utf-8")
        except (TypeError, ValueError, OverflowError):  # e.g. an int beyond 64 bits
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _long_integer(data: bytes) -> bool:
    """True when the JSON text ``data`` may hold an integer of 19 digits or more (orjson reads one beyond
    64 bits as a float): a run of 19 digits after ``,``, ``:``, ``[`` or ``-`` or at the start — not
    after ``.``, as the long fractions orjson writes (0.0015672766590152983). ~10× faster than a regex."""
    zeros = data.translate(_DIGITS_AS_ZERO)
    return zeros.startswith(_LONG_DIGITS) or any(lead + _LONG_DIGITS in zeros for lead in (b",", b":", b"[", b"-"))


def _parse(text: str | bytes) -> Any:
    """The JSON value of ``text`` exactly as the json module reads it (orjson, faster, when it reads it the
    same: not for an integer beyond 64 bits, which orjson reads as a float)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if _orjson is not None and not _long_integer(data):
        try:
            return _orjson.loads(data)
        except ValueError:
            pass
    return json.loads(text)


def _loads(data: bytes) -> Any:
    """JSON from UTF-8 bytes; raises PackingError."""
    try:
        return _parse(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackingError(f"a packed part is not JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------------
# Writing


def _slots(compact: dict[str, Any]) -> list[dict[str, Any]]:
    """Every explanation (a dict) of the compact form, in its order: a slot's place is its number."""
    return [explanation for outcomes in (compact.get("regimens") or {}).values() if isinstance(outcomes, dict)
            for explanation in outcomes.values() if isinstance(explanation, dict)]


def _float_lists(slots: list[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """Take every explanation's ``values`` out (changed in place) when it is a non-empty list of
    floats; returns [(slot, the floats)]."""
    taken = []
    for k, explanation in enumerate(slots):
        values = explanation.get("values")
        if isinstance(values, list) and values and set(map(type, values)) == {float}:  # floats only
            taken.append((k, values))
            del explanation["values"]
    return taken


def _coded_terms(explanation: Mapping[str, Any], names: list[Any]) -> list[Any]:
    """``[feature list, {term: [positions]}]`` when every feature of the ``terms`` map is a name of
    the explanation's feature list (the usual case), else ``[None, the map]``."""
    j = explanation.get("features")
    listed = names[j] if type(j) is int and 0 <= j < len(names) and isinstance(names[j], list) else None
    if listed is not None:
        position = {name: i for i, name in reversed(list(enumerate(listed))) if isinstance(name, str)}
        terms = explanation["terms"]
        if all(isinstance(v, list) and all(isinstance(f, str) and f in position for f in v) for v in terms.values()):
            return [j, {term: [position[f] for f in v] for term, v in terms.items()}]
    return [None, explanation["terms"]]


def _coded_entry(entry: Mapping[str, Any]) -> list[Any]:
    """An entry of ``top`` without its contribution, as ``[flags, the entry without what the flags
    say is derived]``: 1 its ``text`` is ``"label: display"``, 2 its ``display`` is its ``missing``
    labels joined by ", ", 4 its ``fields`` are its ``missing`` fields (the usual cases)."""
    rest = {k: v for k, v in entry.items() if k != "contribution"}
    flags, missing = 0, rest.get("missing")
    if isinstance(missing, list) and all(isinstance(m, dict) and isinstance(m.get("label"), str) for m in missing):
        if rest.get("fields") == [m.get("field") for m in missing] and "fields" in rest:
            flags |= 4
            del rest["fields"]
        if rest.get("display") == ", ".join(m["label"] for m in missing):
            flags |= 2
    label, display, text = rest.get("label"), rest.get("display"), rest.get("text")
    if isinstance(label, str) and isinstance(display, str) and text == f"{label}: {display}":
        flags |= 1
        del rest["text"]
    if flags & 2:
        del rest["display"]
    return [flags, rest]


def _entry_back(flags: int, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry of ``top`` that :func:`_coded_entry` coded (``entry`` changed in place)."""
    if flags & 4:
        entry["fields"] = [m.get("field") for m in entry["missing"]]
    if flags & 2:
        entry["display"] = ", ".join(m["label"] for m in entry["missing"])
    if flags & 1:
        entry["text"] = f"{entry['label']}: {entry['display']}"
    return entry


def _interned_terms(slots: list[dict[str, Any]], names: list[Any]) -> dict[str, Any]:
    """Take each explanation's ``terms`` and ``top`` out (changed in place), each distinct one once;
    returns ``{"terms": [coded maps], "top": [coded entries], "at": [[slot, terms index or None,
    [[entry index, contribution], …] or None]]}`` (:func:`_coded_terms`, :func:`_coded_entry`)."""
    tables: dict[str, dict[str, tuple[int, Any]]] = {"terms": {}, "top": {}}
    seen: dict[tuple[Any, str], int] = {}  # (feature list, terms text) → its index: each map coded once

    def index(kind: str, value: Any) -> int:
        return tables[kind].setdefault(_dumps(value), (len(tables[kind]), value))[0]

    entries: dict[str, int] = {}  # an entry's text (its contribution aside) → its index: each coded once

    def entry_index(entry: dict[str, Any]) -> int:
        key = _dumps({k: v for k, v in entry.items() if k != "contribution"})
        if key not in entries:
            entries[key] = index("top", _coded_entry(entry))
        return entries[key]

    at = []
    for k, explanation in enumerate(slots):
        t = shown = None
        if isinstance(explanation.get("terms"), dict):
            key = (explanation.get("features") if type(explanation.get("features")) is int else None,
                   _dumps(explanation["terms"]))
            if key not in seen:
                seen[key] = index("terms", _coded_terms(explanation, names))
            t = seen[key]
            del explanation["terms"]
        top = explanation.get("top")
        if isinstance(top, list) and all(isinstance(e, dict) and type(e.get("contribution")) is float for e in top):
            shown = [[entry_index(e), e["contribution"]] for e in explanation.pop("top")]
        if t is not None or shown is not None:
            at.append([k, t, shown])
    return {name: [v for _, v in table.values()] for name, table in tables.items()} | {"at": at}


def _column_codes(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index per cell, each column's distinct values in order of first appearance, column after
    column) of a float64 matrix, compared bit for bit (so -0.0 and 0.0 stay apart)."""
    bits = matrix.view("<u8")
    rows = np.arange(bits.shape[0])[:, None]
    order = np.argsort(bits, axis=0, kind="stable")  # stable: a run of equal values starts at its first row
    ordered = np.take_along_axis(bits, order, axis=0)
    starts = np.ones(bits.shape, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    run_start = np.maximum.accumulate(np.where(starts, rows, 0), axis=0)
    first = np.empty_like(order)  # per cell: the row where its value first appears in its column
    np.put_along_axis(first, order, np.take_along_axis(order, run_start, axis=0), axis=0)
    is_first = first == rows
    codes = np.take_along_axis(np.cumsum(is_first, axis=0) - 1, first, axis=0)
    return codes, bits.T[is_first.T]


def _coded_values(lists: list[tuple[int, list[float]]]) -> tuple[list[Any], bytes, bytes]:
    """(layout, index bytes, distinct-value bytes) of the SHAP value lists, grouped by length into
    matrices; the layout has per group ``[[slot, …], index width in bytes, list length]``."""
    groups: dict[int, list[tuple[int, list[float]]]] = {}
    for item in lists:
        groups.setdefault(len(item[1]), []).append(item)
    layout, indices, distinct = [], [], []
    for members in groups.values():
        codes, values = _column_codes(np.asarray([v for _, v in members], dtype="<f8"))
        dtype = next(t for limit, t in _WIDTHS if len(members) <= limit)
        indices.append(codes.astype(dtype).tobytes())
        distinct.append(values.tobytes())
        layout.append([[k for k, _ in members], np.dtype(dtype).itemsize, codes.shape[1]])
    return layout, b"".join(indices), b"".join(distinct)


def _framed(parts: list[bytes]) -> bytes:
    """The parts, each after its length (uint32 little-endian)."""
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _layout(text: str) -> tuple[dict[str, Any], bytes, bytes]:
    """(layout, index bytes, distinct-value bytes) of the explanations' plain stored text."""
    value = _parse(text)  # what a reader of the plain text would get: that is what must come back
    layout: dict[str, Any] = {}
    indices = distinct = b""
    if isinstance(value, dict) and value.get("format") == _COMPACT_FORMAT:
        slots = _slots(value)
        lists = _float_lists(slots)
        names = value.get("features") if isinstance(value.get("features"), list) else []
        layout["interned"] = _interned_terms(slots, names)
        layout["values"], indices, distinct = _coded_values(lists)
    layout["value"] = value
    return layout, indices, distinct


def _deflate(data: bytes, preset: bytes | None = None) -> bytes:
    """``data`` as a zlib stream (RFC 1950), started from the ``preset`` dictionary if given."""
    packer = zlib.compressobj(_LEVEL, zdict=preset) if preset else zlib.compressobj(_LEVEL)
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes, preset: bytes | None = None) -> bytes:
    """The bytes of a :func:`_deflate` stream; raises zlib.error when it is not one (or incomplete)."""
    unpacker = zlib.decompressobj(zdict=preset) if preset else zlib.decompressobj()
    out = unpacker.decompress(data) + unpacker.flush()
    if not unpacker.eof or unpacker.unused_data:
        raise zlib.error("incomplete or trailing data")
    return out


def pack_fields(texts: Mapping[str, str | None]) -> tuple[dict[str, str | None], tuple[str, bytes] | None]:
    """The stored texts of a record's packed fields and its side blob, from their plain stored JSON
    texts (``texts``: name → text or None). Returns ({name: reference text or None}, (digest, bytes)
    or None when both fields are None)."""
    outputs, explanations = texts.get("outputs"), texts.get("explanations")
    if outputs is None and explanations is None:
        return {"outputs": None, "explanations": None}, None
    layout, indices, distinct = _layout(explanations) if explanations is not None else ({}, b"", b"")
    text = _framed([b"" if outputs is None else outputs.encode("utf-8"), _dumps(layout).encode("utf-8")])
    # three streams: the text parts share words (and the preset dictionary's); the numbers would only
    # spoil the text's coding
    data = _framed([_deflate(text, PRESET), _deflate(indices), _deflate(distinct)])
    digest = blob_digest(data)
    refs = {name: None if texts.get(name) is None else _dumps({"blob": digest, "format": FORMATS[name]})
            for name in PACKED_FIELDS}
    return refs, (digest, data)


def blob_reference(text: str | None) -> str | None:
    """The side blob's digest that a stored field's text refers to, or None (not a reference). Cheap:
    only a short text of the reference's shape is parsed."""
    if text is None or len(text) > 200 or not text.startswith('{"blob":'):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    digest = value.get("blob") if isinstance(value, dict) and value.get("format") in FORMATS.values() else None
    return digest if isinstance(digest, str) else None


# ---------------------------------------------------------------------------------------------------
# Reading


def _unframed(payload: bytes, count: int) -> list[bytes]:
    """The ``count`` parts of a :func:`_framed` payload; raises PackingError when it is not one."""
    parts, at = [], 0
    while at < len(payload):
        if at + 4 > len(payload):
            raise PackingError("a packed blob ends inside a part's length")
        (n,) = struct.unpack_from("<I", payload, at)
        parts.append(payload[at + 4:at + 4 + n])
        at += 4 + n
        if at > len(payload):
            raise PackingError("a packed blob ends inside a part")
    if len(parts) != count:
        raise PackingError(f"a packed blob has {len(parts)} parts, not {count}")
    return parts


def _blob_parts(value: Mapping[str, Any], blobs: Mapping[str, bytes] | None) -> list[bytes]:
    """[outputs text, explanations layout, index bytes, distinct-value bytes] of the side blob that a
    reference names, its digest checked first; raises PackingError."""
    digest = value["blob"]
    data = None if blobs is None else blobs.get(digest)
    if data is None:
        raise PackingError(f"the side blob {str(digest)[:16]}… of this field is missing")
    data = bytes(data)
    if blob_digest(data) != digest:
        raise PackingError(f"the side blob {str(digest)[:16]}… was changed: its bytes no longer hash to its key")
    try:
        parts = _unframed(data, 3)
        text, indices, distinct = _inflate(parts[0], PRESET), _inflate(parts[1]), _inflate(parts[2])
    except zlib.error as exc:
        raise PackingError(f"the side blob {str(digest)[:16]}… cannot be decompressed ({exc})") from None
    return [*_unframed(text, 2), indices, distinct]


def _restore_values(slots: list[dict[str, Any]], layout: list[Any], indices: bytes, distinct: bytes) -> None:
    """Put the coded SHAP values back into their explanations (changed in place); raises
    PackingError when the parts do not fit together."""
    values = np.frombuffer(distinct, dtype="<u8")
    at_code = at_value = 0
    try:
        for members, width, columns in layout:
            width, columns, count = int(width), int(columns), len(members) * int(columns)
            codes = np.frombuffer(indices, dtype=f"<u{width}", count=count, offset=at_code)
            codes = codes.reshape(len(members), columns).astype(np.int64)
            at_code += count * width
            sizes = codes.max(axis=0) + 1  # first-appearance order: a column's codes are 0 … its count − 1
            starts = at_value + np.concatenate(([0], np.cumsum(sizes)[:-1]))
            at_value += int(sizes.sum())
            matrix = values[starts[None, :] + codes].view("<f8").tolist()
            for k, row in zip(members, matrix, strict=True):
                slots[k]["values"] = row
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PackingError(f"packed explanations do not fit together ({exc})") from None
    if at_code != len(indices) or at_value != values.size:
        raise PackingError("packed explanations hold more values than their layout places")


def _restore_terms(slots: list[dict[str, Any]], names: list[Any], interned: Mapping[str, Any]) -> None:
    """Put each explanation's ``terms`` and ``top`` back (changed in place)."""
    # Each distinct map or entry is decoded once; each use is a copy of its own (no two explanations
    # share an object, as after reading the plain text): a map coded as positions is {text: [text]},
    # copied here; entries and other maps are parsed anew from their text, all in one parse.
    terms: list[Any] = []
    for j, coded in interned["terms"]:
        terms.append(_dumps(coded) if j is None else {
            term: [names[j][i] for i in positions] for term, positions in coded.items()})
    top = [_dumps(_entry_back(flags, entry)) for flags, entry in interned["top"]]
    at = interned["at"]
    pieces = ",".join("[" + (terms[t] if t is not None and isinstance(terms[t], str) else "null") + ",["
                      + ",".join(top[i] for i, _ in shown or ()) + "]]" for _, t, shown in at)
    for (k, t, shown), (parsed, entries) in zip(at, _parse("[" + pieces + "]"), strict=True):
        explanation = slots[k]
        if t is not None:
            explanation["terms"] = parsed if isinstance(terms[t], str) else {
                term: list(features) for term, features in terms[t].items()}
        if shown is not None:
            explanation["top"] = [dict(sorted({**entry, "contribution": c}.items()))
                                  for entry, (_, c) in zip(entries, shown, strict=True)]


def _explanations(parts: list[bytes]) -> Any:
    """The explanations of a blob's parts, as their plain stored text reads; raises PackingError."""
    layout = _loads(parts[1])
    if not isinstance(layout, dict) or "value" not in layout:
        raise PackingError("the packed blob holds no explanations")
    restored = layout["value"]
    if "values" not in layout:
        return restored
    slots = _slots(restored)
    try:
        _restore_terms(slots, restored.get("features") or [], layout["interned"])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise PackingError(f"packed explanations do not fit together ({exc})") from None
    _restore_values(slots, layout["values"], parts[2], parts[3])
    for outcomes in restored["regimens"].values():  # keys in the order the plain text had them
        for outcome, explanation in outcomes.items():
            if isinstance(explanation, dict):
                outcomes[outcome] = dict(sorted(explanation.items()))
    return restored


def _squeezed(text: Any) -> bytes:
    """The bytes of an inline (format 1 / 3) packed part: base64 text of zlib; raises PackingError."""
    if not isinstance(text, str):
        raise PackingError("a packed part is not text")
    try:
        return zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise PackingError(f"a packed part cannot be decompressed ({exc})") from None


def _inline_explanations(value: Mapping[str, Any]) -> Any:
    """The explanations of a ``packed-f64/3`` field (the form before side blobs); raises PackingError."""
    doc = _loads(_squeezed(value["json"]))
    floats = np.frombuffer(_squeezed(value["values"]), dtype="<f8")
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


def _is_packed(value: Any, fmt: str, keys: set[str]) -> bool:
    """True when ``value`` is a packed field of format ``fmt`` with exactly ``keys``."""
    return isinstance(value, dict) and value.get("format") == fmt and set(value) == keys


def unpack_field(name: str, value: Any, blobs: Mapping[str, bytes] | None = None) -> Any:
    """The value of field ``name`` as its plain stored text would read, from the parsed stored text
    (packed, or plain for records written before packing: returned as it is). ``blobs``: side blobs by
    digest (:func:`~.records.side_blobs`), needed for the formats that refer to one. Raises PackingError."""
    if name not in PACKED_FIELDS or not isinstance(value, dict):
        return value
    if _is_packed(value, FORMATS[name], {"blob", "format"}):
        parts = _blob_parts(value, blobs)
        if name == "outputs":
            if not parts[0]:
                raise PackingError("the packed blob holds no outputs")
            return _loads(parts[0])
        return _explanations(parts)
    if name == "outputs" and _is_packed(value, INLINE_OUTPUTS_FORMAT, {"format", "json"}):
        return _loads(_squeezed(value["json"]))
    if name == "explanations" and _is_packed(value, INLINE_EXPLANATIONS_FORMAT, {"format", "json", "values"}):
        return _inline_explanations(value)
    return value
