"""Server-side sessions of the clinician page: an opaque random id in the browser, its hash in the database.

Signing in to the page with an API key starts a session: the browser gets a random session id
(``secrets.token_urlsafe(32)``, 256 bits) in an HttpOnly cookie, and the ``page_sessions`` table —
in the key store's database — keeps only the SHA-256 of that id, the key id it is bound to, and its
times. Neither the API key nor the session id is ever stored or logged, so neither a copy of the
database nor a stolen cookie gives the API key, and a stolen cookie stops working at sign-out.

Every use of a session (:meth:`SessionStore.resume`) checks, in one read joined with the key's
row: the session exists and was not ended (sign-out), it was used within the idle lifetime (default
30 minutes, to within a minute) and started within the absolute lifetime (default 12 hours), and its
key is not revoked — so ``keys revoke`` ends the key's page sessions at once, from any process. The lifetimes come from
``$RESPONSE_MODEL_SESSION_IDLE_MINUTES`` and ``$RESPONSE_MODEL_SESSION_MAX_HOURS``
(:meth:`Lifetimes.from_env`), read once at start-up.

Form tokens (:func:`form_token`) are an HMAC-SHA-256 keyed by a browser secret — the session id, or
before sign-in a pre-session id (:mod:`response_model.service.web`) — over a purpose label. A token
can only be computed by whoever holds that id; the database holds only the id's SHA-256, from which
no token can be derived. No further server secret is needed: the id is already 256 bits the server
issued and only that browser holds, and a key of its own would have to be shared by every worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from response_model.service.environment import positive_number
from response_model.service.keys import TIME_FORMAT, KeyInfo, api_keys, metadata, parse_time

log = logging.getLogger(__name__)

IDLE_ENV = "RESPONSE_MODEL_SESSION_IDLE_MINUTES"
ABSOLUTE_ENV = "RESPONSE_MODEL_SESSION_MAX_HOURS"
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_ABSOLUTE_HOURS = 12.0
TOUCH_INTERVAL = timedelta(minutes=1)
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)

page_sessions = sa.Table(
    "page_sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),  # hex SHA-256 of the session id
    sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.key_id"), nullable=False, index=True),
    sa.Column("created", sa.String(32), nullable=False),  # UTC, TIME_FORMAT (text order is time order)
    sa.Column("last_used", sa.String(32), nullable=False),
    sa.Column("expires", sa.String(32), nullable=False, index=True),  # created + the absolute lifetime
    sa.Column("ended", sa.String(32), nullable=True),  # sign-out time; NULL while open
)


class SessionEnded(Exception):  # noqa: N818 - a state, not a programming error
    """The browser's session cannot be used; the message says why (for the sign-in page)."""


@dataclass(frozen=True)
class Lifetimes:
    """How long a page session lasts: ``idle`` without use, ``absolute`` after sign-in at most."""

    idle: timedelta = timedelta(minutes=DEFAULT_IDLE_MINUTES)
    absolute: timedelta = timedelta(hours=DEFAULT_ABSOLUTE_HOURS)

    @classmethod
    def from_env(cls) -> Lifetimes:
        """Return the lifetimes of ``$RESPONSE_MODEL_SESSION_IDLE_MINUTES`` / ``…_MAX_HOURS`` (else the defaults);
        ValueError naming the variable for a value that is not a positive number."""
        return cls(timedelta(minutes=positive_number(IDLE_ENV, DEFAULT_IDLE_MINUTES)),
                   timedelta(hours=positive_number(ABSOLUTE_ENV, DEFAULT_ABSOLUTE_HOURS)))

    def describe(self) -> str:
        """Return the lifetimes in words, e.g. ``30 minutes without use, 12 hours after signing in``."""
        return f"{_words(self.idle)} without use, {_words(self.absolute)} after signing in"


def _words(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    if minutes >= 120 and minutes % 60 == 0:
        return f"{minutes / 60:g} hours"
    return f"{minutes:g} minute{'s' if minutes != 1 else ''}"


def well_formed(browser_id: str | None) -> bool:
    """True if ``browser_id`` looks like an id this module issues (43 URL-safe characters)."""
    return isinstance(browser_id, str) and _ID_RE.fullmatch(browser_id) is not None


def new_browser_id() -> str:
    """Return a fresh random id for a browser (256 bits, URL-safe): a session or pre-session id."""
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """Return the hex SHA-256 of a session id: what the database stores instead of the id."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def form_token(browser_id: str, purpose: str) -> str:
    """Return the form token of ``browser_id`` for ``purpose`` (HMAC-SHA-256, URL-safe base64)."""
    mac = hmac.new(browser_id.encode("ascii"), f"response-model page form: {purpose}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode("ascii").rstrip("=")


def token_matches(browser_id: str | None, purpose: str, sent: str) -> bool:
    """True if ``sent`` is the form token of ``browser_id`` for ``purpose`` (compared in constant time)."""
    if not well_formed(browser_id):
        return False
    return hmac.compare_digest(form_token(browser_id, purpose).encode(), sent.encode("utf-8", "replace"))


@dataclass(frozen=True)
class PageSession:
    """An open session: its id (never shown in a repr), the key it is bound to and its times."""

    session_id: str = field(repr=False)
    key: KeyInfo
    created: datetime
    expires: datetime


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


class SessionStore:
    """Page sessions in the key store's database (``engine``: the key store's); creates the table if missing."""

    def __init__(self, engine: Engine, lifetimes: Lifetimes | None = None) -> None:
        self.engine = engine
        self.lifetimes = lifetimes or Lifetimes()
        metadata.create_all(engine, tables=[api_keys, page_sessions])  # the key table first: the foreign key

    def start(self, key: KeyInfo, now: datetime | None = None) -> str:
        """Open a session for ``key``; return its id (for the cookie; only its hash is kept).

        Sessions that ended or expired are deleted on the way, so the table holds open ones only.
        """
        now = now or datetime.now(UTC)
        session_id = new_browser_id()
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            conn.execute(page_sessions.delete().where(sa.or_(
                page_sessions.c.ended.is_not(None), page_sessions.c.expires <= _text(now),
                page_sessions.c.last_used <= _text(now - self.lifetimes.idle))))
            conn.execute(page_sessions.insert().values(
                session_hash=session_hash(session_id), key_id=key.key_id, created=_text(now),
                last_used=_text(now), expires=_text(now + self.lifetimes.absolute), ended=None))
        log.info("page session started for key %s", key.key_id)
        return session_id

    def resume(self, session_id: str | None, now: datetime | None = None) -> PageSession:
        """Return the open session of ``session_id`` and mark it used; SessionEnded saying why it cannot be
        used (unknown, signed out, idle or absolute lifetime over, key revoked)."""
        now = now or datetime.now(UTC)
        if not well_formed(session_id):
            raise SessionEnded("not signed in" if not session_id else "this browser's session is not valid")
        hashed = session_hash(session_id)
        query = (sa.select(page_sessions, api_keys.c.name, api_keys.c.role, api_keys.c.created.label("key_created"),
                           api_keys.c.revoked)
                 .join(api_keys, api_keys.c.key_id == page_sessions.c.key_id)
                 .where(page_sessions.c.session_hash == hashed))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        self._check(row, now)
        # A durable write costs milliseconds: the time of use is written at most once per touch interval,
        # so a session may end up to that much before its idle lifetime (never after it).
        if now - parse_time(row.last_used) >= self._touch_interval():
            with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
                conn.execute(page_sessions.update()
                             .where(page_sessions.c.session_hash == hashed, page_sessions.c.ended.is_(None))
                             .values(last_used=_text(now)))
        key = KeyInfo(key_id=row.key_id, name=row.name, role=row.role, created=parse_time(row.key_created))
        return PageSession(session_id, key, parse_time(row.created), parse_time(row.expires))

    def _touch_interval(self) -> timedelta:
        """Return how stale the stored time of last use may get: a tenth of the idle lifetime, at most a minute."""
        return min(TOUCH_INTERVAL, self.lifetimes.idle / 10)

    def _check(self, row, now: datetime) -> None:
        """Raise SessionEnded unless ``row`` (a session joined with its key) is usable at ``now``."""
        if row is None:
            raise SessionEnded("this browser's session is not known (it ended, or the service's database changed)")
        if row.ended is not None:
            raise SessionEnded("this browser's session was ended by signing out")
        if row.revoked is not None:
            raise SessionEnded("the API key of this session has been revoked")
        if now >= parse_time(row.expires):
            raise SessionEnded(f"the session expired ({_words(self.lifetimes.absolute)} after signing in)")
        if now >= parse_time(row.last_used) + self.lifetimes.idle:
            raise SessionEnded(f"the session expired ({_words(self.lifetimes.idle)} without use)")

    def end(self, session_id: str | None, now: datetime | None = None) -> bool:
        """End the session of ``session_id`` (sign-out); return whether an open session was ended."""
        if not well_formed(session_id):
            return False
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            result = conn.execute(page_sessions.update()
                                  .where(page_sessions.c.session_hash == session_hash(session_id),
                                         page_sessions.c.ended.is_(None))
                                  .values(ended=_text(now or datetime.now(UTC))))
        return bool(result.rowcount)
