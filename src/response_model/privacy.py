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

The audit trail's chain key (:func:`audit_keyring`, HMAC-SHA-256 over each record) is found the same
way — ``RESPONSE_MODEL_AUDIT_KEY``, else ``.response-model/audit.key`` — and, unlike the pseudonym key,
is a keyring: older keys stay to verify older records (see docs/audit-trail.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------------------------------
# The audit trail's chain key (HMAC-SHA-256), found like the pseudonymisation key and kept beside it

AUDIT_KEY_ENV = "RESPONSE_MODEL_AUDIT_KEY"
AUDIT_KEY_FILE_ENV = "RESPONSE_MODEL_AUDIT_KEY_FILE"
#: Where ``response-model run`` keeps the local audit keyring (relative to the working directory).
LOCAL_AUDIT_KEY_FILE = Path(".response-model/audit.key")


class AuditKeyError(ResponseModelError, RuntimeError):
    """The audit trail's chain key is missing, too short, or not in the keyring."""


@dataclass(frozen=True)
class ChainKey:
    """One HMAC key of the audit chain: its id (a fingerprint, stored in each record's MAC envelope)
    and its secret."""

    key_id: str
    secret: bytes = field(repr=False)


def chain_key(secret: bytes | str) -> ChainKey:
    """The :class:`ChainKey` of a secret: its id is ``a`` + 11 hex digits of a SHA-256 fingerprint (the
    id says which key made a MAC without revealing the key). Raises AuditKeyError for a short secret."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_KEY_BYTES:
        raise AuditKeyError(f"an audit key is {len(raw)} bytes long; expected at least {MIN_KEY_BYTES}")
    return ChainKey("a" + hashlib.sha256(b"response-model audit key id\0" + raw).hexdigest()[:11], raw)


@dataclass(frozen=True)
class AuditKeyring:
    """The audit chain's keys by id; ``current`` signs new records, the others verify older ones."""

    keys: dict[str, ChainKey]
    current: ChainKey

    @classmethod
    def of(cls, *secrets_: bytes | str) -> AuditKeyring:
        """A keyring of the given secrets, oldest first: the last is the current key."""
        if not secrets_:
            raise AuditKeyError("an audit keyring needs at least one key")
        keys = [chain_key(s) for s in secrets_]
        return cls({k.key_id: k for k in keys}, keys[-1])


def local_audit_key_file() -> Path:
    """Return ``$RESPONSE_MODEL_AUDIT_KEY_FILE``, else ``.response-model/audit.key`` in the working directory."""
    return Path(os.environ.get(AUDIT_KEY_FILE_ENV, "").strip() or LOCAL_AUDIT_KEY_FILE)


def _keyring_text(text: str) -> list[str]:
    """The secrets of a keyring's text: one per line (or separated by commas), ``#`` comments skipped."""
    return [s for line in text.splitlines() if not line.lstrip().startswith("#")
            for s in line.replace(",", " ").split()]


def audit_keyring() -> AuditKeyring:
    """Return the audit keyring: ``$RESPONSE_MODEL_AUDIT_KEY`` (one or more secrets separated by commas,
    the last being the current one), else the file of :func:`local_audit_key_file` (one secret a
    line, the last current). Raises AuditKeyError, saying how to get one, when neither is there."""
    value = os.environ.get(AUDIT_KEY_ENV, "")
    if value.strip():
        return AuditKeyring.of(*_keyring_text(value))
    path = local_audit_key_file()
    if path.is_file() and _keyring_text(path.read_text(encoding="utf-8")):
        return AuditKeyring.of(*_keyring_text(path.read_text(encoding="utf-8")))
    raise AuditKeyError(
        f"the audit trail needs its chain key (HMAC-SHA-256): set the environment variable {AUDIT_KEY_ENV} "
        f"(at least {MIN_KEY_BYTES} characters, from a secret store, never kept in the trail's database); "
        f"or, for local use, run the commands from the folder where `response-model run` created {path}"
    )


def write_secret_file(path: Path, text: str, *, append: bool = False) -> None:
    """Write (or append) ``text`` to a file readable by its owner only (created 0600). Returns None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def ensure_local_audit_key(path: str | Path | None = None) -> bool:
    """Create the local audit keyring file (default :func:`local_audit_key_file`, one random 256-bit key,
    owner-only) unless ``$RESPONSE_MODEL_AUDIT_KEY`` is set or the file exists. For the embedded local
    default (``response-model run``). Returns True if the file was created now."""
    path = Path(path) if path is not None else local_audit_key_file()
    if os.environ.get(AUDIT_KEY_ENV, "").strip() or path.exists():
        return False
    write_secret_file(path, secrets.token_hex(32) + "\n")
    return True


def rotate_local_audit_key(path: str | Path | None = None) -> ChainKey:
    """Append a new random key to the local audit keyring file (older keys stay, to verify older
    records); returns the new current key. Restart the service afterwards to sign with it."""
    path = Path(path) if path is not None else local_audit_key_file()
    secret = secrets.token_hex(32)
    write_secret_file(path, secret + "\n", append=True)
    return chain_key(secret)
