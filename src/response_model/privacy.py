"""Pseudonymisation of patient identifiers: a keyed hash, so that nobody without the key can link back.

``pseudonymise(identifier)`` returns the first 16 hex digits (64 bits) of HMAC-SHA256(key, identifier).
The same identifier and key always give the same pseudonym (so records of one patient from several
files still join); another key gives unrelated pseudonyms. Unlike a plain hash, a keyed hash cannot
be reversed by hashing every possible medical-record number: the key must stay secret and must not
be stored next to the data.

Every command finds the key the same way, through :func:`pseudonym_key` (so one patient keeps one
pseudonym across ``run``, ``serve``, ``score``, ``validate``, ``ingest``, the audit trail, …):

1. the environment variable ``RESPONSE_MODEL_PSEUDONYM_KEY`` (at least 16 characters): production,
   filled from a secret store;
2. else the key file ``$RESPONSE_MODEL_PSEUDONYM_KEY_FILE``, by default ``.response-model/pseudonym.key``
   in the working directory — the file ``response-model run`` creates (owner-only) for the embedded
   local default, beside ``mlflow.db`` and ``service.db``.

A key can also be passed explicitly. Rotating the key changes every pseudonym: see the README.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from response_model.errors import ResponseModelError

PSEUDONYM_KEY_ENV = "RESPONSE_MODEL_PSEUDONYM_KEY"
PSEUDONYM_KEY_FILE_ENV = "RESPONSE_MODEL_PSEUDONYM_KEY_FILE"
#: Where ``response-model run`` keeps the local key (relative to the working directory).
LOCAL_KEY_FILE = Path(".response-model/pseudonym.key")
PSEUDONYM_LENGTH = 16  # hex digits kept
MIN_KEY_BYTES = 16


class PseudonymKeyError(ResponseModelError, RuntimeError):
    """The pseudonymisation key is missing or too short."""


def local_key_file() -> Path:
    """Return the key file used when ``$RESPONSE_MODEL_PSEUDONYM_KEY`` is unset:
    ``$RESPONSE_MODEL_PSEUDONYM_KEY_FILE``, else ``.response-model/pseudonym.key`` in the working directory."""
    return Path(os.environ.get(PSEUDONYM_KEY_FILE_ENV, "").strip() or LOCAL_KEY_FILE)


def pseudonym_key() -> bytes:
    """Return the pseudonymisation key: ``$RESPONSE_MODEL_PSEUDONYM_KEY``, else the key file of
    :func:`local_key_file`; raises PseudonymKeyError, saying how to get one, when neither is there."""
    value = os.environ.get(PSEUDONYM_KEY_ENV, "")
    if value:
        return _checked(value.encode("utf-8"), f"${PSEUDONYM_KEY_ENV}")
    path = local_key_file()
    if path.is_file():
        return _checked(path.read_text(encoding="utf-8").strip().encode("utf-8"), str(path))
    raise PseudonymKeyError(
        f"pseudonymisation needs a secret key: set the environment variable {PSEUDONYM_KEY_ENV} "
        f"(at least {MIN_KEY_BYTES} characters, e.g. the output of "
        "`python -c \"import secrets; print(secrets.token_hex(32))\"`) and keep it away from the data; "
        f"or, for local use, run the commands from the folder where `response-model run` created {path}"
    )


def ensure_local_key(path: str | Path | None = None) -> bool:
    """Create the local key file (default :func:`local_key_file`; a random 256-bit key, readable by its
    owner only) when ``$RESPONSE_MODEL_PSEUDONYM_KEY`` is unset and the file does not exist, and set the
    variable from it for this process (and the processes it starts).

    For the embedded local default only (``response-model run``): in production the key comes from a
    secret store and is never kept next to the data. Returns True if the file was created now; does
    nothing (False) when the environment variable is already set.
    """
    if os.environ.get(PSEUDONYM_KEY_ENV):
        return False
    path = Path(path) if path is not None else local_key_file()
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
