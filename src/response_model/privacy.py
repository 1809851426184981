"""Pseudonymisation of patient identifiers: a keyed hash, so that nobody without the key can link back.

``pseudonymise(identifier)`` returns the first 16 hex digits (64 bits) of HMAC-SHA256(key, identifier).
The same identifier and key always give the same pseudonym (so records of one patient from several
files still join); another key gives unrelated pseudonyms. Unlike a plain hash, a keyed hash cannot
be reversed by hashing every possible medical-record number: the key must stay secret and must not
be stored next to the data. The key comes from the environment variable
``RESPONSE_MODEL_PSEUDONYM_KEY`` (at least 16 characters), or is passed explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import os

PSEUDONYM_KEY_ENV = "RESPONSE_MODEL_PSEUDONYM_KEY"
PSEUDONYM_LENGTH = 16  # hex digits kept
MIN_KEY_BYTES = 16


class PseudonymKeyError(RuntimeError):
    """The pseudonymisation key is missing or too short."""


def pseudonym_key() -> bytes:
    """Return the pseudonymisation key from ``$RESPONSE_MODEL_PSEUDONYM_KEY``; raises PseudonymKeyError."""
    value = os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not value:
        raise PseudonymKeyError(
            f"pseudonymisation needs a secret key: set the environment variable {PSEUDONYM_KEY_ENV} "
            f"(at least {MIN_KEY_BYTES} characters, e.g. the output of "
            "`python -c \"import secrets; print(secrets.token_hex(32))\"`) and keep it away from the data"
        )
    return _checked(value.encode("utf-8"), f"${PSEUDONYM_KEY_ENV}")


def _checked(key: bytes, name: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"{name} is {len(key)} bytes long; expected at least {MIN_KEY_BYTES} so that it cannot be guessed"
        )
    return key


def pseudonymise(identifier: str, key: bytes | None = None) -> str:
    """Return the pseudonym of ``identifier``: HMAC-SHA256(key, identifier) as 16 hex digits.

    Surrounding whitespace of ``identifier`` is ignored. ``key`` defaults to :func:`pseudonym_key`.
    """
    text = str(identifier).strip()
    if not text:
        raise ValueError("cannot pseudonymise an empty identifier")
    if key is None:
        key = pseudonym_key()
    elif isinstance(key, str):
        key = _checked(key.encode("utf-8"), "the pseudonymisation key")
    else:
        key = _checked(bytes(key), "the pseudonymisation key")
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_LENGTH]
