"""``AuditTrail.verify``: walk the keyed chain against the signed checkpoints and say which kind of
tampering was found, and where (the cases of :data:`~.chain.TAMPER_CASES`).

- ``edited``: a record's MAC does not recompute, and the next record still links to it; or its side
  blob (``audit_blobs``, the packed outputs and explanations whose digest the MAC covers) is missing
  or no longer hashes to its key;
- ``rehashed``: an edited record whose MAC (and the tail's) was recomputed without the key — its
  MAC does not verify, or the next record links to its old MAC, or a checkpoint signed another MAC;
- ``deleted-middle``: a sequence gap, or a record linking to a MAC no stored record has;
- ``swapped``: a record linking to (or written as) a record stored elsewhere in the trail;
- ``forged``: records newer than the last checkpoint whose MACs do not verify (an insider without the
  key cannot make one that does);
- ``deleted-newest``: the trail ends before the record of a signed checkpoint;
- ``bad-checkpoint``: a checkpoint in the witness that is unreadable or whose signature fails.

Only the first problem is reported: everything after it is suspect anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from response_model.privacy import AuditKeyring
from response_model.service.audit.chain import GENESIS_HASH, LEGACY_KEY, VerifyResult, chain_break, record_key
from response_model.service.audit.checkpoints import Checkpoint, WitnessEntry, signature_problem
from response_model.service.audit.records import _CHAIN_COLUMNS, audit_records, blob_problem, side_blobs

_SWAP_WINDOW = 64  # records either side where a record whose MAC fails is looked for as moved content


@dataclass
class _Walk:
    """What the walk has seen so far."""

    n: int = 0
    prev_hash: str = GENESIS_HASH
    hint: str | None = None
    keyed_from: int | None = None  # the first keyed record
    n_legacy: int = 0
    key_ids: set[str] = field(default_factory=set)


def _bad(walk: _Walk, seq: int, case: str, reason: str, checkpoints: list[Checkpoint]) -> VerifyResult:
    return VerifyResult(False, walk.n, seq, reason, None, case, walk.n_legacy,
                        walk.n_legacy or None, len(checkpoints), _newest(checkpoints), tuple(sorted(walk.key_ids)))


def _newest(checkpoints: list[Checkpoint]) -> int | None:
    return max((c.seq for c in checkpoints), default=None)


def checked_checkpoints(entries: list[WitnessEntry], trusted: dict, where: str) -> tuple[list[Checkpoint], str | None]:
    """The checkpoints whose signatures verify, and why the first bad one is bad (None: none is)."""
    good: list[Checkpoint] = []
    for entry in entries:
        problem = entry.problem or signature_problem(entry.checkpoint, trusted)
        if problem is not None:
            record = f" (record {entry.checkpoint.seq})" if entry.checkpoint is not None else ""
            return good, f"checkpoint {entry.index} of the {where}{record} is bad: {problem}"
        good.append(entry.checkpoint)
    return good, None


def verify_chain(conn: Connection, keyring: AuditKeyring, entries: list[WitnessEntry], trusted: dict,
                 where: str, batch_size: int = 1_000) -> VerifyResult:
    """Recompute the chain in ``conn`` from its first record against the witness ``entries`` (checked with
    the ``trusted`` public keys; ``where`` names the witness in reasons). Returns a :class:`VerifyResult`."""
    checkpoints, problem = checked_checkpoints(entries, trusted, where)
    walk = _Walk()
    if problem is not None:
        return _bad(walk, None, "bad-checkpoint", problem, checkpoints)
    by_seq: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        by_seq.setdefault(checkpoint.seq, []).append(checkpoint)
    newest = _newest(checkpoints)
    for row, blobs in _chain_rows(conn, batch_size):
        walk.n += 1
        found = _record_problem(conn, row, walk, keyring, by_seq, newest)
        if found is None and (side := blob_problem(row, blobs)) is not None:
            found = "edited", f"record {int(row.seq)}'s MAC verifies, but {side}"
        if found is not None:
            return _bad(walk, int(row.seq), found[0], found[1], checkpoints)
        walk.prev_hash = row.hash
    if newest is not None and newest > walk.n:
        cut = f"record {walk.n + 1}" if newest == walk.n + 1 else f"records {walk.n + 1}–{newest}"
        ends = f"ends at record {walk.n}" if walk.n else "is empty"
        return _bad(walk, walk.n + 1, "deleted-newest", f"{cut} deleted: the trail {ends}, but the checkpoint "
                    f"signed at {by_seq[newest][-1].time} covers record {newest}", checkpoints)
    return VerifyResult(True, walk.n, None, None, None if walk.n == 0 else walk.prev_hash, None, walk.n_legacy,
                        walk.n_legacy or None, len(checkpoints), newest, tuple(sorted(walk.key_ids)))


def _record_problem(conn: Connection, row: Any, walk: _Walk, keyring: AuditKeyring,
                    by_seq: dict[int, list[Checkpoint]], newest: int | None) -> tuple[str, str] | None:
    """(case, reason) of the first problem with ``row`` at its place in the walk, or None (the walk
    then counts its key)."""
    seq = int(row.seq)
    broken = chain_break(row, walk.n, walk.prev_hash)
    if broken is not None:
        return _link_problem(conn, row, walk, broken, keyring)
    key = record_key(row, keyring, walk.hint)
    if key is None or (key == LEGACY_KEY and walk.keyed_from is not None):
        return _mac_problem(conn, row, keyring, newest, key == LEGACY_KEY, walk)
    for checkpoint in by_seq.get(seq, ()):
        if checkpoint.head != row.hash:
            return "rehashed", (f"record {seq} is not the record the checkpoint signed at {checkpoint.time} covers "
                                "(its MAC differs): the trail was rewritten up to there")
    if seq == 1 and any(c.trail != row.hash for cs in by_seq.values() for c in cs):
        return "rehashed", ("record 1 is not the first record the checkpoints were signed for: the trail was "
                            "rewritten from its start (or the witness belongs to another trail)")
    walk.hint = key
    if key == LEGACY_KEY:
        walk.n_legacy += 1
    else:
        walk.key_ids.add(key)
        walk.keyed_from = walk.keyed_from or seq
    return None


def _link_problem(conn: Connection, row: Any, walk: _Walk, broken: str, keyring: AuditKeyring) -> tuple[str, str]:
    """(case, reason) for a record that does not stand where it is: a gap, or a link to another record."""
    seq = int(row.seq)
    if seq != walk.n:
        return "deleted-middle", broken
    followed = conn.execute(sa.select(audit_records.c.seq).where(audit_records.c.hash == row.prev_hash)
                            .order_by(audit_records.c.seq).limit(1)).scalar()
    if followed is not None:
        return "swapped", (f"{broken}: record {seq} follows the record now stored as {followed}, so records were "
                           f"swapped or moved (the one written after record {followed} stands at {seq})")
    written_as = next((s for s in range(seq + 1, seq + _SWAP_WINDOW) if record_key(
        row, keyring, walk.hint, seq=s) is not None), None)
    what = f" it was written as record {written_as}," if written_as is not None else ""
    return "deleted-middle", (f"{broken}: the record it follows is gone —{what} so a record before it was "
                              "deleted and the later ones renumbered")


def _mac_problem(conn: Connection, row: Any, keyring: AuditKeyring, newest: int | None, unkeyed: bool,
                 walk: _Walk) -> tuple[str, str]:
    """(case, reason) for a record whose MAC does not verify (or an unkeyed record after keyed ones)."""
    seq = int(row.seq)
    what = (f"hash mismatch: record {seq} is an unkeyed record (format 1) after keyed ones (from record "
            f"{walk.keyed_from})" if unkeyed else
            f"hash mismatch: record {seq}'s MAC does not verify with any key of the audit keyring "
            f"({', '.join(sorted(keyring.keys))})")
    moved = _moved_from(conn, row, keyring, walk.hint)
    if moved is not None:
        return "swapped", f"{what}; its content was written as record {moved} (records {seq} and {moved} swapped)"
    after = conn.execute(sa.select(*_CHAIN_COLUMNS).where(audit_records.c.seq == seq + 1)).first()
    beyond = newest is None or seq > newest
    last = f"newer than the last checkpoint (record {newest})" if newest is not None else "and no checkpoint covers it"
    if after is None:
        if beyond:
            return "forged", f"{what}: a forged record appended at the end ({last}), or the newest record edited"
        return "edited", f"{what}: the content of record {seq} (the newest) was changed after it was written"
    if after.prev_hash != row.hash:
        return "rehashed", (f"{what}, and record {seq + 1} links to another MAC: record {seq} was edited and its "
                            "MAC recomputed without the key")
    next_key = record_key(after, keyring, walk.hint)
    # the next record verifies: keyed, or unkeyed while the walk is still in the unkeyed prefix
    next_ok = next_key is not None and (next_key != LEGACY_KEY or (walk.keyed_from is None and not unkeyed))
    if next_ok:
        return "edited", f"{what}: the content of record {seq} was changed after it was written (record {seq + 1} " \
                         "still links to its MAC)"
    if beyond:
        return "forged", (f"{what}; record {seq + 1} does not verify either, though it links to it: forged "
                          f"records appended from record {seq} ({last}), or edited and re-hashed without the key")
    return "rehashed", (f"{what}; record {seq + 1} does not verify either, though it links to it: record {seq} was "
                        "edited and the tail re-hashed without the key (or the key that made them left the keyring)")


def _moved_from(conn: Connection, row: Any, keyring: AuditKeyring, hint: str | None) -> int | None:
    """The seq of a nearby record whose place ``row``'s content was written for (its MAC verifies there),
    or None."""
    seq = int(row.seq)
    near = conn.execute(sa.select(audit_records.c.seq, audit_records.c.prev_hash, audit_records.c.hash)
                        .where(audit_records.c.seq.between(seq - _SWAP_WINDOW, seq + _SWAP_WINDOW))
                        .where(audit_records.c.seq != seq)).all()
    for other in near:
        moved = SimpleNamespace(**{**row._mapping, "hash": other.hash})
        if record_key(moved, keyring, hint, seq=int(other.seq), prev_hash=other.prev_hash) not in (None, LEGACY_KEY):
            return int(other.seq)
    return None


def _chain_rows(conn: Connection, batch_size: int) -> Iterator[tuple[Any, dict[str, bytes]]]:
    """Every record's links and hashed fields (:data:`_CHAIN_COLUMNS`), in seq order, read in
    batches of ``batch_size`` with a cursor on seq; each with the side blobs of its batch."""
    last_seq = 0
    while True:
        chunk = conn.execute(
            sa.select(*_CHAIN_COLUMNS).where(audit_records.c.seq > last_seq)
            .order_by(audit_records.c.seq).limit(batch_size)
        ).all()
        if not chunk:
            return
        blobs = side_blobs(conn, chunk)
        yield from ((row, blobs) for row in chunk)
        last_seq = int(chunk[-1].seq)
