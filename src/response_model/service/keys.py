"""API keys: bearer tokens, each with exactly one role (clinician, auditor, registrar or admin).

A registrar records what happened to patients after a prediction (``POST /v1/outcomes``); it reads
no predictions and makes none.

A token looks like ``rm_<key_id>_<secret>``: ``key_id`` is 12 hex digits (public: it names the key in
``keys list`` and in the audit trail), ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits).
:meth:`KeyStore.create` returns the token once; the database keeps only a salted hash of it, so a
copy of the database does not let anybody call the API. Tokens are never logged, and nothing here
prints them except ``keys create``.

A key's ``name`` is a label for its holder ("ward-3 tablet", "audit office") and is stored as given:
it must never be a patient's name, record number or any other identifier of a person being treated.

The store is a SQLAlchemy URL (portable Core only): by default ``sqlite:///<cwd>/service.db``, or
``$RESPONSE_MODEL_DB_URL``; a ``postgresql+psycopg://…`` URL works too. The same database can hold
the audit trail (:mod:`response_model.service.audit`), and both can share one engine; the clinician page's
sessions (:mod:`response_model.service.sessions`) live beside the keys, bound to a key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

DB_URL_ENV = "RESPONSE_MODEL_DB_URL"
DEFAULT_DB_FILE = "service.db"
ROLES: tuple[str, ...] = ("clinician", "auditor", "registrar", "admin")
TOKEN_PREFIX = "rm"
MAX_NAME_LENGTH = 200

# Hashing of the secret part. PBKDF2-HMAC-SHA256 with a random 16-byte salt per key; the stored value
# names the algorithm, iteration count and salt ("pbkdf2_sha256$<iterations>$<salt>$<hash>") so the
# cost can be raised later without a migration. Why not a slow setting (or scrypt)? Key stretching
# only protects low-entropy secrets such as passwords; ours are 256 random bits, which no amount of
# guessing can find even with a single hash per guess. authenticate() runs on every request and the
# service aims at a p50 of a few milliseconds, so we keep the cost at ~0.4 ms (1,000 iterations)
# rather than the 30–60 ms of a password setting. A server-side pepper (HMAC with a secret key) was
# not chosen either: it is one more secret to deploy, and losing it would invalidate every key.
HASH_ALGORITHM = "pbkdf2_sha256"
HASH_ITERATIONS = 1_000
SALT_BYTES = 16

_KEY_ID_RE = r"[0-9a-f]{12}"
_SECRET_RE = r"[A-Za-z0-9_-]{43}"  # secrets.token_urlsafe(32)
_TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}_({_KEY_ID_RE})_({_SECRET_RE})")
_MAX_TOKEN_LENGTH = 100

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order


class KeyStoreError(RuntimeError):
    """A key-store operation failed (bad role or name, missing database)."""


class UnknownKeyError(KeyStoreError, LookupError):
    """No key has the id given."""


# ---------------------------------------------------------------------------------------------------
# Shared by the key store and the audit trail: database URL and engine


def default_db_url() -> str:
    """``$RESPONSE_MODEL_DB_URL`` if set, else ``sqlite:///<current directory>/service.db``."""
    url = os.environ.get(DB_URL_ENV, "").strip()
    if url:
        return url
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def make_engine(url: str | None = None) -> Engine:
    """A SQLAlchemy engine for ``url`` (default :func:`default_db_url`).

    SQLite: the file's folder is created if missing; every connection runs ``PRAGMA journal_mode=WAL``
    and ``PRAGMA synchronous=FULL`` (a commit is on disk when it returns), waits up to 30 s for a
    lock, and transactions are begun explicitly — ``BEGIN IMMEDIATE`` when the connection carries
    the execution option ``sqlite_begin="IMMEDIATE"`` (the audit trail's appends), else ``BEGIN``.
    """
    url = url or default_db_url()
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when a transaction begins (see "begin").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def describe_url(engine: Engine) -> str:
    """The engine's URL with any password hidden (safe to print)."""
    return engine.url.render_as_string(hide_password=True)


def require_table(engine: Engine, table: sa.Table, what: str) -> None:
    """Raise KeyStoreError unless ``table`` exists (without creating a SQLite file on the way)."""
    url = engine.url
    if (url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:"
            and not url.database.startswith("file:") and not Path(url.database).expanduser().exists()):
        raise KeyStoreError(f"no {what} at {describe_url(engine)}: the database file does not exist")
    if not sa.inspect(engine).has_table(table.name):
        raise KeyStoreError(f"no {what} at {describe_url(engine)}: table {table.name!r} is missing")


def utc_now_text() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(255), nullable=False),
    sa.Column("created", sa.String(32), nullable=False),  # UTC, TIME_FORMAT
    sa.Column("revoked", sa.String(32), nullable=True),  # UTC, TIME_FORMAT; NULL while active
)


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never its token or hash. ``revoked`` is None while active."""

    key_id: str
    name: str
    role: str
    created: datetime
    revoked: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


class NewKey(NamedTuple):
    """``(key_id, token)`` from :meth:`KeyStore.create`; its repr hides the token."""

    key_id: str
    token: str

    def __repr__(self) -> str:
        return f"NewKey(key_id={self.key_id!r}, token='***')"


def _hash_secret(secret: str, salt: bytes, iterations: int = HASH_ITERATIONS) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    b64 = lambda b: base64.urlsafe_b64encode(b).decode("ascii").rstrip("=")  # noqa: E731
    return f"{HASH_ALGORITHM}${iterations}${b64(salt)}${b64(digest)}"


def _check_secret(secret: str, stored: str) -> bool:
    try:
        algorithm, iterations, salt_b64, _ = stored.split("$")
        if algorithm != HASH_ALGORITHM:
            return False
        salt = base64.urlsafe_b64decode(salt_b64 + "=" * (-len(salt_b64) % 4))
        candidate = _hash_secret(secret, salt, int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate.encode("ascii"), stored.encode("ascii"))


_DUMMY_HASH = _hash_secret("x" * 43, b"\0" * SALT_BYTES)
_MEMO_SIZE = 10_000  # verified keys remembered per store (see KeyStore._verified); cleared when full


def _row_to_info(row) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        name=row.name,
        role=row.role,
        created=parse_time(row.created),
        revoked=parse_time(row.revoked),
    )


class KeyStore:
    """API keys in a SQL database. ``url`` is a SQLAlchemy URL or an engine (default: :func:`default_db_url`).

    ``create=False`` opens an existing store only (raises KeyStoreError if there is none) — for
    read-only commands, so that a mistyped path does not silently create an empty database.
    """

    def __init__(self, url: str | Engine | None = None, *, create: bool = True) -> None:
        self._owns_engine = not isinstance(url, Engine)
        self._memo: dict[str, bytes] = {}  # verified keys: {stored hash: SHA-256 of the secret} (see _verified)
        self.engine: Engine = url if isinstance(url, Engine) else make_engine(url)
        if create:
            metadata.create_all(self.engine, tables=[api_keys])
        else:
            require_table(self.engine, api_keys, "key store")

    def close(self) -> None:
        """Release the database connections (only if this store created the engine)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------------------

    def create(self, role: str, name: str) -> NewKey:
        """Create a key; returns ``(key_id, token)``. The token is not kept and cannot be shown again.

        ``name`` labels the holder (e.g. "ward-3 tablet"); it must not identify a patient.
        """
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        name = (name or "").strip()
        if not name:
            raise KeyStoreError("a key needs a name: a label for its holder, e.g. 'ward-3 tablet'")
        if len(name) > MAX_NAME_LENGTH:
            raise KeyStoreError(f"the key's name is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
        secret = secrets.token_urlsafe(32)
        stored = _hash_secret(secret, secrets.token_bytes(SALT_BYTES))
        for _ in range(5):  # a clash of 48-bit ids is unlikely; retry rather than fail
            key_id = secrets.token_hex(6)
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        api_keys.insert().values(
                            key_id=key_id, name=name, role=role, secret_hash=stored,
                            created=utc_now_text(), revoked=None,
                        )
                    )
            except sa.exc.IntegrityError:
                continue
            log.info("created API key %s with role %s", key_id, role)
            return NewKey(key_id, f"{TOKEN_PREFIX}_{key_id}_{secret}")
        raise KeyStoreError("could not allocate a unique key id")  # pragma: no cover

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first, active or revoked (never the token or its hash)."""
        query = sa.select(
            api_keys.c.key_id, api_keys.c.name, api_keys.c.role, api_keys.c.created, api_keys.c.revoked
        ).order_by(api_keys.c.created, api_keys.c.key_id)
        with self.engine.connect() as conn:
            return [_row_to_info(row) for row in conn.execute(query)]

    def get(self, key_id: str) -> KeyInfo | None:
        """The key with this id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        return None if row is None else _row_to_info(row)

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (from now on it authenticates nobody). Revoking twice keeps the first time.

        Raises UnknownKeyError if there is no such key.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked.is_(None))
                .values(revoked=utc_now_text())
            )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None:
            raise UnknownKeyError(f"no API key with id {key_id!r}")
        if result.rowcount:
            log.info("revoked API key %s", key_id)
        return _row_to_info(row)

    def authenticate(self, token: str | None) -> KeyInfo | None:
        """The active key that ``token`` belongs to, or None (unknown, malformed or revoked token).

        Surrounding whitespace is ignored; the caller strips the ``Bearer`` scheme. The comparison of
        hashes takes constant time, and an unknown key id costs the same hashing as a known one.
        """
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH:
            return None
        match = _TOKEN_RE.fullmatch(token.strip())
        if match is None:
            return None
        key_id, secret = match.groups()
        with self.engine.connect() as conn:  # read on every call: a revocation takes effect at once
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None:
            _check_secret(secret, _DUMMY_HASH)
            return None
        if not self._verified(secret, row.secret_hash) or row.revoked is not None:
            return None
        return _row_to_info(row)

    def _verified(self, secret: str, stored: str) -> bool:
        """True if ``secret`` matches the stored hash ``stored``.

        A successful PBKDF2 check is remembered in memory as ``{stored hash: SHA-256 of the secret}``
        (never the secret itself), so the next request with that key costs one SHA-256 and a
        constant-time comparison (~2 µs) instead of the PBKDF2 iterations (~0.4 ms). The key's row
        is still read on every call, so revocation is immediate; a changed or removed hash simply
        misses the memo. Failed checks are not remembered.
        """
        fingerprint = hashlib.sha256(secret.encode("utf-8")).digest()
        known = self._memo.get(stored)
        if known is not None and hmac.compare_digest(known, fingerprint):
            return True
        if not _check_secret(secret, stored):
            return False
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[stored] = fingerprint
        return True
