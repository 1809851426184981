"""Helpers for tests of what the service records: a service on the exported smoke model, and the database as text.

Used by tests/test_audit_everything.py and tests/test_identifiers.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.keys import DB_URL_ENV, KeyStore
from response_model.service.models import EXAMPLE_PATIENT

ROLES = ("clinician", "auditor", "admin")


@contextmanager
def audited_service(model_dir, folder, monkeypatch, name: str, pseudonym_key: str) -> Iterator[dict]:
    """A running service (TestClient; server errors answered, not raised) on ``model_dir`` with one key
    per role: yields ``{"client", "tokens", "url"}``."""
    url = f"sqlite:///{folder}/{name}.db"
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, pseudonym_key)
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    with KeyStore(url) as store:
        tokens = {role: store.create(role, f"{name} {role}").token for role in ROLES}
    client = TestClient(create_app(str(model_dir), url, alias_check=0), raise_server_exceptions=False)
    with client:
        yield {"client": client, "tokens": tokens, "url": url}


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def patient(**changes) -> dict:
    record = copy.deepcopy(EXAMPLE_PATIENT)
    record.update(changes)
    return record


def records(url: str, after: int = 0) -> list[dict]:
    """The audit records with seq > ``after``, oldest first, as dicts of their stored columns (detail parsed)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM audit_records WHERE seq > :after ORDER BY seq"),
                                {"after": after}).mappings().all()
    finally:
        engine.dispose()
    return [{**row, "detail": json.loads(row["detail"]) if row["detail"] else None} for row in rows]


def last_seq(url: str) -> int:
    """The sequence number of the newest audit record (0: none)."""
    found = records(url)
    return found[-1]["seq"] if found else 0


def database_text(url: str) -> str:
    """Every text value of every table of the database, one per line (to search for raw identifiers)."""
    engine = sa.create_engine(url)
    lines = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    lines += [str(value) for value in row if isinstance(value, str)]
    finally:
        engine.dispose()
    return "\n".join(lines)
