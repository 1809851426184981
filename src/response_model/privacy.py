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
import secrets
from pathlib import Path

from response_model.errors import ResponseModelError

PSEUDONYM_KEY_ENV = "RESPONSE_MODEL_PSEUDONYM_KEY"
PSEUDONYM_LENGTH = 16  # hex digits kept
MIN_KEY_BYTES = 16


class PseudonymKeyError(ResponseModelError, RuntimeError):
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


def ensure_local_key(path: str | Path) -> bool:
    """Set ``$RESPONSE_MODEL_PSEUDONYM_KEY`` from the key file ``path`` for this process, creating the
    file (a random 256-bit key, readable by its owner only) when it does not exist.

    For the embedded local default only (``response-model run``): in production the key comes from a
    secret store and is never kept next to the data. Returns True if the file was created now; does
    nothing (False) when the environment variable is already set.
    """
    if os.environ.get(PSEUDONYM_KEY_ENV):
        return False
    path = Path(path)
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    os.environ[PSEUDONYM_KEY_ENV] = _checked(path.read_text().strip().encode("utf-8"), str(path)).decode("utf-8")
    return created


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
