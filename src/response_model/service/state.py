"""The service's state: its settings, the model holder, the key store, page sessions and the audit trail, in one
typed object.

:func:`~response_model.service.app.create_app` stores one :class:`ServiceState` as
``app.state.service``; routes and handlers reach it through :mod:`response_model.service.deps`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from response_model.service.audit import AuditTrail
from response_model.service.holder import FALLBACK_ENV, ModelHolder, alias_check_seconds, default_model_uri
from response_model.service.keys import KeyStore
from response_model.service.sessions import Lifetimes, SessionStore


@dataclass(frozen=True)
class Settings:
    """How the service was asked to run (arguments of ``create_app``, else the environment)."""

    model_uri: str
    #: SQLAlchemy URL of the key store and audit trail (None: ``make_engine``'s default)
    db_url: str | None = None
    #: seconds between alias checks; None: ``$RESPONSE_MODEL_ALIAS_CHECK_SECONDS``, read at start-up
    alias_check: float | None = None
    #: exported model folder served when ``model_uri`` cannot be loaded at start-up
    fallback_dir: str | Path | None = None
    #: how long a clinician page session lasts (``$RESPONSE_MODEL_SESSION_…``, read when the settings are made)
    session_lifetimes: Lifetimes = field(default_factory=Lifetimes.from_env)

    @classmethod
    def resolve(cls, model_uri: str | None = None, db_url: str | None = None, alias_check: float | None = None,
                fallback_dir: str | Path | None = None) -> Settings:
        """Return the settings, the model URI and fallback folder defaulting to the environment's."""
        fallback = fallback_dir or os.environ.get(FALLBACK_ENV, "").strip() or None
        return cls(model_uri or default_model_uri(), db_url, alias_check, fallback)

    def alias_interval(self) -> float:
        """Return the seconds between alias checks (0 = none)."""
        return alias_check_seconds() if self.alias_check is None else float(self.alias_check)


@dataclass(frozen=True)
class RenderedReport:
    """The validation report rendered for one loaded model (``key`` names the model)."""

    key: tuple[object, ...]
    html: str


@dataclass
class ServiceState:
    """Everything the routes share. The key store and trail open in the app's lifespan (:meth:`open`)."""

    settings: Settings
    holder: ModelHolder = field(default_factory=ModelHolder)
    #: the validation report of the model in service, rendered on first request
    report: RenderedReport | None = None
    report_lock: threading.Lock = field(default_factory=threading.Lock)
    _keys: KeyStore | None = None
    _trail: AuditTrail | None = None
    _sessions: SessionStore | None = None

    def open(self, keys: KeyStore, trail: AuditTrail) -> None:
        """Attach the key store and audit trail; open the page sessions in the key store's database (at start-up)."""
        self._keys, self._trail = keys, trail
        self._sessions = SessionStore(keys.engine, self.settings.session_lifetimes)

    @property
    def keys(self) -> KeyStore:
        """Return the key store; raises RuntimeError before start-up."""
        if self._keys is None:
            raise RuntimeError("the service has not started: the key store opens in the app's lifespan")
        return self._keys

    @property
    def sessions(self) -> SessionStore:
        """Return the clinician page's sessions; raises RuntimeError before start-up."""
        if self._sessions is None:
            raise RuntimeError("the service has not started: the page sessions open in the app's lifespan")
        return self._sessions

    @property
    def trail(self) -> AuditTrail:
        """Return the audit trail; raises RuntimeError before start-up."""
        if self._trail is None:
            raise RuntimeError("the service has not started: the audit trail opens in the app's lifespan")
        return self._trail
