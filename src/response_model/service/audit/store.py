"""The audit trail's store: the ``audit_records`` table and :class:`AuditTrail`, which appends to it,
verifies the chain and reads records back.

Appends are serialised: on SQLite in a ``BEGIN IMMEDIATE`` transaction (the database's write lock
is taken before the last hash is read), on PostgreSQL under ``LOCK TABLE … IN EXCLUSIVE MODE``
(readers are not blocked). ``seq`` is the primary key, so on any other database two appends that
raced would collide there, and the loser retries. :meth:`AuditTrail.append` returns only after the
transaction has committed: with SQLite's ``synchronous=FULL`` (and PostgreSQL's default
``synchronous_commit=on``) the record is then on disk. Records that threads of this process append
at the same time are written together (:class:`_GroupCommit`), so that many requests share one
durable commit.

What a record holds and how it is hashed: :mod:`response_model.service.audit.chain`. Filters, pages
and exports for auditors: :mod:`response_model.service.audit.readers` (:meth:`AuditTrail.select`,
:meth:`AuditTrail.query` and :meth:`AuditTrail.count_matching` hand over to it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from response_model.privacy import AuditKeyring, audit_keyring, pseudonymise
from response_model.service.audit.chain import (
    GENESIS_HASH,
    LEGACY_KEY,
    SIDE_BLOB,
    AuditError,
    RecordCheck,
    VerifyResult,
    record_check,
    record_hash,
    record_key,
    stored_content,
)
from response_model.service.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    DatabaseWitness,
    FileWitness,
    load_signing_key,
    open_witness,
    sign_checkpoint,
    trusted_public_keys,
)
from response_model.service.audit.readers import TrailFilter, count_records, query_records, select_records
from response_model.service.audit.records import (
    _CHAIN_COLUMNS,
    AuditEntry,
    _Row,
    audit_blobs,
    audit_records,
    blob_problem,
    metadata,
    row_to_entry,
    side_blobs,
)
from response_model.service.audit.verify import verify_chain
from response_model.service.keys import (
    KeyStoreError,
    describe_url,
    make_engine,
    require_table,
    utc_now_text,
)

log = logging.getLogger(__package__)  # one logger for the whole audit package

_APPEND_RETRIES = 20

# ---------------------------------------------------------------------------------------------------


class AuditTrail:
    """The audit trail in a SQL database. ``url``: SQLAlchemy URL or engine (default: ``default_db_url()``).

    ``pseudonym_key`` defaults to ``$RESPONSE_MODEL_PSEUDONYM_KEY`` (read at each append).
    ``create=False`` opens an existing trail only (raises AuditError if there is none).
    ``keyring``: the chain's HMAC keys (default ``response_model.privacy.audit_keyring()``, read at
    the first append or verify); ``witness``: where checkpoints go (a path, a URL or a witness;
    default :func:`~.checkpoints.open_witness`'s). ``checkpoint_every``: publish a signed checkpoint
    each time the trail passes a multiple of this many records (None: only :meth:`checkpoint`).
    """

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        pseudonym_key: bytes | str | None = None,
        create: bool = True,
        keyring: AuditKeyring | None = None,
        witness: str | FileWitness | DatabaseWitness | None = None,
        checkpoint_every: int | None = None,
    ) -> None:
        self._owns_engine = not isinstance(url, Engine)
        self.engine: Engine = url if isinstance(url, Engine) else make_engine(url)
        self._pseudonym_key = pseudonym_key
        self._keyring = keyring
        self._witness = witness
        self._checkpoint_every = checkpoint_every
        self._checkpoint_lock = threading.Lock()
        self._checkpointed: int | None = None  # the seq of this process's last checkpoint
        self._anchor: str | None = None  # the MAC of record 1, named by every checkpoint
        self._group = _GroupCommit(self._append_durably)
        self._blobs_table = create  # the side table of packed records exists (else made at the first append)
        if create:
            metadata.create_all(self.engine, tables=[audit_records, audit_blobs])
        else:
            try:
                require_table(self.engine, audit_records, "audit trail")
            except KeyStoreError as exc:
                raise AuditError(str(exc)) from None
        _add_missing_columns(self.engine)

    def close(self) -> None:
        """Release the database connections (only if this trail created the engine)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def keyring(self) -> AuditKeyring:
        """The chain's HMAC keys; raises AuditKeyError (saying how to set one) when there is none."""
        if self._keyring is None:
            self._keyring = audit_keyring()
        return self._keyring

    @property
    def witness(self) -> FileWitness | DatabaseWitness:
        """Where this trail's checkpoints are published (opened on first use)."""
        if not isinstance(self._witness, (FileWitness, DatabaseWitness)):
            self._witness = open_witness(self._witness)
        return self._witness

    @property
    def url(self) -> str:
        """The engine's URL with any password hidden (safe to print)."""
        return describe_url(self.engine)

    # -- writing ------------------------------------------------------------------------------------

    def _content(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The stored content of a caller's record (see :func:`~.chain.stored_content`), with this
        trail's pseudonymisation key."""
        return stored_content(record, self._pseudonym_key)

    def pseudonym(self, patient_id: str) -> str:
        """The pseudonym this trail stores for the raw ``patient_id`` (its keyed hash; raises
        PseudonymKeyError without a key), e.g. to find a patient's records."""
        return pseudonymise(patient_id, key=self._pseudonym_key)

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise what :meth:`append` would raise for ``record`` (AuditError, RawIdentifierError,
        PseudonymKeyError); write nothing. Returns None."""
        self._content(record)

    def _lock(self, conn: Connection) -> None:
        """Take the table's write lock in ``conn``'s transaction, where the database needs it."""
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"LOCK TABLE {audit_records.name} IN EXCLUSIVE MODE")
        # SQLite: the transaction began with BEGIN IMMEDIATE, which holds the write lock already.
        # Elsewhere: the primary key on seq turns a race into an IntegrityError, and we retry.

    def append(self, record: Mapping[str, Any]) -> AuditEntry:
        """Append one record; returns it as stored once it is committed (durable).

        ``record`` keys: ``endpoint`` and ``status`` (``accepted``/``rejected``) and ``http_status``
        are required; optional ``time`` (aware datetime or ISO text; default now, taken under the
        lock so that times follow the sequence), ``key_id``, ``role``, ``model_name``,
        ``model_version``, ``input_digest`` or ``request_body`` (digested, not stored),
        ``patient_id`` (raw; stored only as its pseudonym), ``prediction_id``, ``regimens`` (list of
        ids), ``outputs``, ``explanations``, ``detail`` (JSON values; ``detail`` for a rejection's
        reasons, e.g. field-level validation messages — never identifiers: a string equal to the raw
        patient id anywhere in these fields is refused). Other keys are refused.
        Raises AuditError for a bad record and PseudonymKeyError if a patient id is given but no
        pseudonymisation key is configured.
        """
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Mapping[str, Any]], *, entries: bool = True) -> list[AuditEntry] | None:
        """Append several records in one transaction (one durable commit), e.g. a batch request's rows.

        Returns them as stored (``entries=False``: None, saving the parsing of their JSON fields).

        Group commit: records that threads of this process append at the same time are written by
        one of them in a single transaction, in arrival order (each call's records stay together),
        and every call returns only once the transaction holding its records has committed —
        one disk flush for many requests instead of one each, and no waiting on the database lock.
        """
        contents = [self._content(record) for record in records]  # checked in the caller's thread
        if not contents:
            return [] if entries else None
        self.keyring  # noqa: B018 - a missing key is this caller's error, raised before the group commit
        if not self._blobs_table:  # a trail opened with create=False, written before side blobs existed
            metadata.create_all(self.engine, tables=[audit_blobs])
            self._blobs_table = True
        rows = self._group.submit(contents)
        self._maybe_checkpoint(rows)
        blobs = dict(content[SIDE_BLOB] for content in contents if content.get(SIDE_BLOB) is not None)
        return [row_to_entry(_Row(values), blobs) for values in rows] if entries else None

    def _append_durably(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append ``contents`` in one transaction, retrying when another writer took the same seq;
        returns the stored rows (see :meth:`_append_contents`)."""
        for attempt in range(_APPEND_RETRIES):
            try:
                return self._append_contents(contents)
            except sa.exc.IntegrityError:
                if attempt == _APPEND_RETRIES - 1:
                    raise
                log.debug("audit append raced another writer; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    def _append_contents(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain ``contents`` onto the newest record and insert them (and their side blobs not stored yet)
        under the write lock; returns the rows as inserted (every column: seq, time, prev_hash and hash
        filled in), once committed."""
        rows, blobs = [], {}
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            self._lock(conn)
            last = conn.execute(
                sa.select(audit_records.c.seq, audit_records.c.hash)
                .order_by(audit_records.c.seq.desc()).limit(1)
            ).first()
            seq, prev_hash = (0, GENESIS_HASH) if last is None else (int(last.seq), last.hash)
            now = utc_now_text()
            for content in contents:
                seq += 1
                values = dict(content)
                blob = values.pop(SIDE_BLOB, None)
                if blob is not None:
                    blobs[blob[0]] = blob[1]
                if values["time"] is None:
                    values["time"] = now
                values["seq"], values["prev_hash"] = seq, prev_hash
                values["hash"] = prev_hash = record_hash(seq, values["prev_hash"], values, self.keyring.current)
                rows.append(values)
            self._insert_blobs(conn, blobs)
            conn.execute(audit_records.insert(), rows)
        # leaving conn.begin() committed: with synchronous=FULL the records are on disk now
        return rows

    @staticmethod
    def _insert_blobs(conn: Connection, blobs: Mapping[str, bytes]) -> None:
        """Insert the side blobs that are not stored yet (content-addressed: one stored is the same bytes)."""
        if not blobs:
            return
        stored = set(conn.execute(sa.select(audit_blobs.c.sha256).where(audit_blobs.c.sha256.in_(list(blobs))))
                     .scalars())
        new = [{"sha256": digest, "data": data} for digest, data in blobs.items() if digest not in stored]
        if new:
            conn.execute(audit_blobs.insert(), new)

    # -- reading ------------------------------------------------------------------------------------

    def verify(self, *, batch_size: int = 1_000) -> VerifyResult:
        """Recompute the chain from the first record with the keyring and check it against the signed
        checkpoints of the witness; stop at the first problem and say which case it is and where.

        Returns a :class:`VerifyResult` (see :mod:`.verify` for the cases). ``batch_size``: records
        read per query. Raises AuditKeyError when no audit keyring is configured.
        """
        keyring, entries, trusted = self.keyring, self.witness.read(), trusted_public_keys()
        # One read transaction: a single snapshot on SQLite (WAL); on PostgreSQL (read committed)
        # records appended meanwhile may be included, which cannot break a chain read in seq order.
        with self.engine.connect() as conn, conn.begin():
            return verify_chain(conn, keyring, entries, trusted, repr(self.witness), batch_size)

    # -- checkpoints --------------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        """Sign the head (seq, MAC, key id, time) and publish it to the witness; returns the checkpoint,
        None for an empty trail. Raises CheckpointError when there is no signing key, or the newest
        record's MAC does not verify with the keyring (a forged head is never signed)."""
        with self.engine.connect() as conn:
            head = conn.execute(sa.select(*_CHAIN_COLUMNS).order_by(audit_records.c.seq.desc()).limit(1)).first()
        if head is None:
            return None
        key_id = record_key(head, self.keyring, self.keyring.current.key_id)
        if key_id in (None, LEGACY_KEY):
            raise CheckpointError(f"the newest record ({head.seq}) does not verify with the audit keyring, so it "
                                  "is not signed: run `response-model audit verify`")
        return self._publish(int(head.seq), head.hash, key_id)

    def checkpoint_if_moved(self) -> Checkpoint | None:
        """:meth:`checkpoint` unless this process's last checkpoint is already of the head; returns it or None."""
        if self._checkpointed is not None and self.head_seq() == self._checkpointed:
            return None
        return self.checkpoint()

    def _publish(self, seq: int, head: str, key_id: str) -> Checkpoint:
        """Sign and publish a checkpoint of record ``seq`` (MAC ``head``); returns it."""
        with self._checkpoint_lock:
            if self._anchor is None:
                with self.engine.connect() as conn:
                    self._anchor = conn.execute(
                        sa.select(audit_records.c.hash).where(audit_records.c.seq == 1)).scalar()
            checkpoint = sign_checkpoint(self._anchor or "", seq, head, key_id, load_signing_key())
            self.witness.publish(checkpoint)
            self._checkpointed = max(seq, self._checkpointed or 0)
        return checkpoint

    def _maybe_checkpoint(self, rows: list[dict[str, Any]]) -> None:
        """Publish a checkpoint of the last of ``rows`` when they passed a multiple of ``checkpoint_every``.
        A witness that fails is logged, never the request's error: its record is stored already."""
        every = self._checkpoint_every
        if not every or rows[-1]["seq"] // every == (rows[0]["seq"] - 1) // every:
            return
        try:
            self._publish(rows[-1]["seq"], rows[-1]["hash"], self.keyring.current.key_id)
        except Exception:  # noqa: BLE001 - the witness being down must not fail a stored request
            log.exception("could not publish the audit trail's checkpoint of record %s", rows[-1]["seq"])

    def get(self, prediction_id: str) -> AuditEntry | None:
        """The record of a prediction (the earliest, if the id was used twice), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_records).where(audit_records.c.prediction_id == prediction_id)
                .order_by(audit_records.c.seq).limit(1)
            ).first()
            blobs = {} if row is None else side_blobs(conn, [row])
        return None if row is None else row_to_entry(row, blobs)

    def query(
        self,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        model_version: str | None = None,
        regimen: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        status: str | None = None,
        after_seq: int | None = None,
        through_seq: int | None = None,
        kind: str | None = None,
    ) -> list[AuditEntry]:
        """Records with ``from_ <= time < to`` (aware datetimes or ISO text), oldest first.

        Optionally only one model version, records covering one regimen id, or one status;
        ``limit`` (at most 1,000) and ``offset`` page through the result. Keywords for cursor
        paging: only records with ``seq > after_seq`` and ``seq <= through_seq``; ``kind``
        ``"prediction"`` (prediction requests: ``readers.PREDICTION_REQUEST_ENDPOINTS``) or ``"access"``
        (everything else, e.g. auditors reading the trail); None = both. See :func:`~.readers.query_records`.
        """
        return query_records(self, from_, to, model_version, regimen, limit, offset, status=status,
                                     after_seq=after_seq, through_seq=through_seq, kind=kind)

    def select(self, flt: TrailFilter, *, after_seq: int | None = None, through_seq: int | None = None,
               kind: str | None = None, limit: int = 100, offset: int = 0,
               explanations: bool = True) -> list[AuditEntry]:
        """The records ``flt`` selects with ``after_seq < seq <= through_seq`` and of ``kind``
        (see :meth:`query`), oldest first, at most ``limit`` (≤ 1,000) after skipping ``offset``.
        ``explanations=False`` leaves out the largest field (every SHAP value; ``None`` in the entries).
        See :func:`~.readers.select_records`."""
        return select_records(self, flt, after_seq=after_seq, through_seq=through_seq, kind=kind,
                                      limit=limit, offset=offset, explanations=explanations)

    def count_matching(self, flt: TrailFilter, *, through_seq: int | None = None,
                       kind: str | None = "prediction") -> int:
        """The number of records that ``flt`` (and ``kind``, ``seq <= through_seq``) selects."""
        return count_records(self, flt, through_seq=through_seq, kind=kind)

    def head_seq(self) -> int:
        """The sequence number of the newest record (0 for an empty trail)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(audit_records.c.seq), 0))).scalar_one())

    def check_record(self, seq: int) -> RecordCheck:
        """Cheap integrity check of one record: its own hash (and its side blob's) and its links to both
        neighbours.

        Returns a :class:`RecordCheck`; raises AuditError if there is no record ``seq``. Reads records
        ``seq − 1``, ``seq`` and ``seq + 1`` only. It cannot see an edit elsewhere in the chain;
        :meth:`verify` (``response-model audit verify``) recomputes the whole chain.
        """
        with self.engine.connect() as conn:
            rows = {int(r.seq): r for r in conn.execute(
                sa.select(*_CHAIN_COLUMNS).where(audit_records.c.seq.between(int(seq) - 1, int(seq) + 1)))}
            row = rows.get(int(seq))
            blobs = {} if row is None else side_blobs(conn, [row])
        if row is None:
            raise AuditError(f"no audit record {seq}")
        check = record_check(row, rows.get(int(seq) - 1), rows.get(int(seq) + 1), self.keyring)
        if check.hash_intact and blob_problem(row, blobs) is not None:  # its MAC covers the blob's digest
            check = dataclasses.replace(check, hash_intact=False)
        return check

    def count(self) -> int:
        """The number of records."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_records)).scalar_one())


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a trail created before them lacks (``inputs``, issue 16), so that an
    older database opens as it is: its records keep their hashes (a None field is not hashed)."""
    present = {column["name"] for column in sa.inspect(engine).get_columns(audit_records.name)}
    missing = [column for column in audit_records.columns if column.name not in present]
    if not missing:
        return
    with engine.begin() as conn:
        for column in missing:  # every later column is nullable text: no rewrite of the rows
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {audit_records.name} ADD COLUMN {column.name} {kind}")
    log.info("audit trail: added column(s) %s", ", ".join(c.name for c in missing))


# ---------------------------------------------------------------------------------------------------
# Group commit


class _Ticket:
    """One caller's records waiting for a group commit."""

    __slots__ = ("contents", "done", "lead", "entries", "error")

    def __init__(self, contents: list[dict[str, Any]]) -> None:
        self.contents = contents
        self.done = threading.Event()
        self.lead = False
        self.entries: list[dict[str, Any]] | None = None
        self.error: BaseException | None = None


class _GroupCommit:
    """Leader/follower group commit: the first caller writes every waiting caller's records in one
    transaction; callers arriving meanwhile wait, and the first of them writes the next group.

    Isolation: when a group's transaction fails (it was rolled back: nothing of it is stored), each
    caller's records are written again in a transaction of their own, so a record the database
    refuses fails its own caller only, never the others of its group."""

    def __init__(self, write) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._writing = False

    def submit(self, contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``contents`` (with a group); returns the stored rows once they are committed."""
        ticket = _Ticket(contents)
        with self._lock:
            self._waiting.append(ticket)
            if not self._writing:
                self._writing = ticket.lead = True
        if not ticket.lead:
            ticket.done.wait()
        if ticket.lead:  # the first caller, or promoted by the previous writer
            self._write_group()
        if ticket.error is not None:
            raise ticket.error
        return ticket.entries

    def _write_each(self, group: list[_Ticket]) -> None:
        """Write each ticket's records in a transaction of its own, so that a record the database
        refuses fails only its own caller (isolation); hand each ticket its rows or its error."""
        for ticket in group:
            try:
                ticket.entries = self._write(ticket.contents)
            except BaseException as error:  # noqa: BLE001 - this caller learns that its records are not stored
                ticket.error = error

    def _write_group(self) -> None:
        """Write every waiting ticket's records in one call of ``write``; hand each ticket its rows
        (or the error), then promote the next waiting caller to writer. Returns None."""
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            entries = self._write([content for ticket in group for content in ticket.contents])
        except Exception as error:  # noqa: BLE001 - nothing was stored: each caller's records alone
            if len(group) == 1:
                group[0].error = error
            else:
                log.warning("audit group commit of %d callers failed (%s); writing each alone",
                            len(group), type(error).__name__)
                self._write_each(group)
        except BaseException as error:  # e.g. KeyboardInterrupt: no caller's records are stored
            for ticket in group:
                ticket.error = error
        else:
            start = 0
            for ticket in group:
                ticket.entries = entries[start:start + len(ticket.contents)]
                start += len(ticket.contents)
        finally:
            with self._lock:
                if self._waiting:  # hand over: the first waiting caller writes the next group
                    self._waiting[0].lead = True
                    self._waiting[0].done.set()
                else:
                    self._writing = False
            for ticket in group:
                ticket.lead = False
                ticket.done.set()
