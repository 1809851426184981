"""Signed checkpoints of the audit chain's head, published to a witness outside the trail's database.

A checkpoint says "record ``seq`` of the trail whose first record has MAC ``trail`` had MAC ``head``
at ``time``", signed with Ed25519 (like a Certificate Transparency signed tree head, RFC 9162, or an
AWS CloudTrail digest file). Someone with write access to the trail's database can cut off its
newest records or rewrite it, but cannot change what the witness holds nor sign a new checkpoint:
``audit verify`` then finds the head behind a checkpoint, or a record whose MAC is not the one signed.

Keys (outside the database, owner-only files, like the pseudonymisation key):

- the signing key: ``$RESPONSE_MODEL_CHECKPOINT_KEY_FILE``, by default ``.response-model/checkpoint.key``
  (PKCS#8 PEM); only the service and ``audit checkpoint`` need it;
- the trusted public keys: ``$RESPONSE_MODEL_CHECKPOINT_PUBLIC_KEYS``, by default
  ``.response-model/checkpoint.pub`` (one base64 raw Ed25519 public key a line, old ones kept after a
  rotation); verifiers need only these. A checkpoint names its signer by the key's fingerprint.

The witness: ``$RESPONSE_MODEL_AUDIT_WITNESS`` — a file path (an append-only JSON-lines file; the
default is ``.response-model/audit-checkpoints.jsonl``) or a SQLAlchemy URL of a second database
(table ``audit_checkpoints``). One witness serves one trail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from response_model.privacy import AuditKeyError, write_secret_file
from response_model.service.environment import positive_number, positive_whole_number
from response_model.service.keys import make_engine, utc_now_text

SIGNING_KEY_FILE_ENV = "RESPONSE_MODEL_CHECKPOINT_KEY_FILE"
PUBLIC_KEYS_ENV = "RESPONSE_MODEL_CHECKPOINT_PUBLIC_KEYS"
WITNESS_ENV = "RESPONSE_MODEL_AUDIT_WITNESS"
LOCAL_SIGNING_KEY_FILE = Path(".response-model/checkpoint.key")
LOCAL_PUBLIC_KEYS_FILE = Path(".response-model/checkpoint.pub")
LOCAL_WITNESS_FILE = Path(".response-model/audit-checkpoints.jsonl")
CHECKPOINT_FORMAT = 1


class CheckpointError(AuditKeyError):
    """A checkpoint could not be signed or published (no signing key, unreachable witness)."""


def _env_path(env: str, default: Path) -> Path:
    return Path(os.environ.get(env, "").strip() or default)


# ---------------------------------------------------------------------------------------------------
# Keys


def public_key_id(public: Ed25519PublicKey) -> str:
    """The fingerprint that names a signing key in its checkpoints: ``c`` + 11 hex digits of SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "c" + hashlib.sha256(raw).hexdigest()[:11]


def public_key_text(public: Ed25519PublicKey) -> str:
    """A public key as one line of the trusted-keys file (base64 of the 32 raw bytes)."""
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_signing_key(path: str | Path | None = None) -> Ed25519PrivateKey:
    """The checkpoint signing key from ``path`` (default ``$RESPONSE_MODEL_CHECKPOINT_KEY_FILE`` or the local
    file); raises CheckpointError, saying how to get one, when it is missing or not an Ed25519 key."""
    path = Path(path) if path is not None else _env_path(SIGNING_KEY_FILE_ENV, LOCAL_SIGNING_KEY_FILE)
    if not path.is_file():
        raise CheckpointError(
            f"signed checkpoints of the audit trail need an Ed25519 signing key: none at {path} (set "
            f"{SIGNING_KEY_FILE_ENV} to a PKCS#8 PEM file readable by the service only; `response-model run` "
            "creates one for local use)")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def trusted_public_keys(path: str | Path | None = None) -> dict[str, Ed25519PublicKey]:
    """The public keys that verify checkpoints, by id: those of the trusted-keys file (default
    ``$RESPONSE_MODEL_CHECKPOINT_PUBLIC_KEYS`` or the local file), plus that of the signing key when this
    process can read it. Returns {} when there are none."""
    path = Path(path) if path is not None else _env_path(PUBLIC_KEYS_ENV, LOCAL_PUBLIC_KEYS_FILE)
    keys: list[Ed25519PublicKey] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(line.strip())))
    with contextlib.suppress(CheckpointError):  # a verifier without the private key: the file's keys only
        keys.append(load_signing_key().public_key())
    return {public_key_id(k): k for k in keys}


def new_signing_key(key_file: str | Path | None = None, public_file: str | Path | None = None) -> str:
    """Make a new signing key (replacing the old private key file, owner-only) and append its public key
    to the trusted-keys file (old public keys stay: old checkpoints still verify); returns its id."""
    key_file = Path(key_file) if key_file is not None else _env_path(SIGNING_KEY_FILE_ENV, LOCAL_SIGNING_KEY_FILE)
    public_file = Path(public_file) if public_file is not None else _env_path(PUBLIC_KEYS_ENV, LOCAL_PUBLIC_KEYS_FILE)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    partial = key_file.with_name(key_file.name + ".new")
    partial.unlink(missing_ok=True)
    write_secret_file(partial, pem)
    partial.replace(key_file)
    public_file.parent.mkdir(parents=True, exist_ok=True)
    with public_file.open("a", encoding="utf-8") as handle:
        handle.write(public_key_text(key.public_key()) + "\n")
    return public_key_id(key.public_key())


def ensure_local_signing_key() -> bool:
    """Create the signing key (and its trusted public key) unless the key file exists. For the embedded
    local default (``response-model run``). Returns True if it was created now."""
    if _env_path(SIGNING_KEY_FILE_ENV, LOCAL_SIGNING_KEY_FILE).exists():
        return False
    new_signing_key()
    return True


# ---------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the chain's head: record ``seq`` has MAC ``head`` (made with chain key
    ``key_id``) in the trail whose record 1 has MAC ``trail``; ``signer`` names the signing key."""

    trail: str
    seq: int
    head: str
    key_id: str
    time: str
    signer: str
    signature: str = ""

    def payload(self) -> bytes:
        """The signed bytes: canonical JSON of every field but the signature."""
        fields = {k: v for k, v in asdict(self).items() if k != "signature"}
        return json.dumps({"v": CHECKPOINT_FORMAT, **fields}, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        """One line of the witness file."""
        return json.dumps({"v": CHECKPOINT_FORMAT, **asdict(self)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse a witness line; raises ValueError (or KeyError/TypeError) for anything else."""
        value = json.loads(text)
        if not isinstance(value, dict) or value.pop("v", None) != CHECKPOINT_FORMAT:
            raise ValueError("not a checkpoint of format 1")
        checkpoint = cls(**value)
        if not isinstance(checkpoint.seq, int) or isinstance(checkpoint.seq, bool):
            raise ValueError("seq is not an integer")
        return checkpoint


def sign_checkpoint(trail: str, seq: int, head: str, key_id: str, key: Ed25519PrivateKey) -> Checkpoint:
    """A checkpoint of record ``seq`` (MAC ``head``) signed now with ``key``."""
    unsigned = Checkpoint(trail, int(seq), head, key_id, utc_now_text(), public_key_id(key.public_key()))
    signature = base64.b64encode(key.sign(unsigned.payload())).decode()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def signature_problem(checkpoint: Checkpoint, trusted: dict[str, Ed25519PublicKey]) -> str | None:
    """Why ``checkpoint``'s signature does not hold (unknown signer, bad signature), or None when it does."""
    public = trusted.get(checkpoint.signer)
    if public is None:
        return (f"signed by key {checkpoint.signer!r}, which is not among the trusted public keys "
                f"({', '.join(sorted(trusted)) or 'none'})")
    try:
        public.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return f"its signature does not verify with key {checkpoint.signer} (the checkpoint was altered or forged)"
    return None


# ---------------------------------------------------------------------------------------------------
# Witnesses: where checkpoints are published


@dataclass(frozen=True)
class WitnessEntry:
    """One entry read from a witness: its position (1-based), the checkpoint or why it is unreadable."""

    index: int
    checkpoint: Checkpoint | None
    problem: str | None = None


class FileWitness:
    """An append-only JSON-lines file of checkpoints (each line written with O_APPEND and fsync)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"witness file {self.path}"

    def publish(self, checkpoint: Checkpoint) -> None:
        """Append ``checkpoint`` durably. Returns None."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, (checkpoint.to_json() + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> list[WitnessEntry]:
        """Every entry, oldest first ([] when the file does not exist)."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [_entry(i, line) for i, line in enumerate(lines, 1) if line.strip()]


_witness_metadata = sa.MetaData()
checkpoint_table = sa.Table(
    "audit_checkpoints", _witness_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)


class DatabaseWitness:
    """Checkpoints in the table ``audit_checkpoints`` of a second database (not the trail's)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        _witness_metadata.create_all(self.engine, tables=[checkpoint_table])

    def __repr__(self) -> str:
        return f"witness database {self.engine.url.render_as_string(hide_password=True)}"

    def publish(self, checkpoint: Checkpoint) -> None:
        """Insert ``checkpoint`` (committed when this returns). Returns None."""
        with self.engine.begin() as conn:
            conn.execute(checkpoint_table.insert().values(seq=checkpoint.seq, body=checkpoint.to_json()))

    def read(self) -> list[WitnessEntry]:
        """Every entry, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(checkpoint_table.c.body).order_by(checkpoint_table.c.id)).all()
        return [_entry(i, row.body) for i, row in enumerate(rows, 1)]


def _entry(index: int, text: str) -> WitnessEntry:
    try:
        return WitnessEntry(index, Checkpoint.from_json(text))
    except (ValueError, KeyError, TypeError) as exc:
        return WitnessEntry(index, None, f"unreadable ({exc.__class__.__name__}: {str(exc)[:80]})")


def open_witness(target: str | Path | None = None) -> FileWitness | DatabaseWitness:
    """The witness at ``target`` — a SQLAlchemy URL (``…://…``) or a file path; default
    ``$RESPONSE_MODEL_AUDIT_WITNESS``, else ``.response-model/audit-checkpoints.jsonl``."""
    text = str(target) if target is not None else os.environ.get(WITNESS_ENV, "").strip() or str(LOCAL_WITNESS_FILE)
    return DatabaseWitness(text) if "://" in text else FileWitness(text)


def checkpoint_records() -> int:
    """Records between the service's checkpoints: ``$RESPONSE_MODEL_CHECKPOINT_RECORDS`` (default 1000)."""
    return positive_whole_number("RESPONSE_MODEL_CHECKPOINT_RECORDS", 1000)


def checkpoint_seconds() -> float:
    """Seconds between the service's checkpoints (when records were added): ``$RESPONSE_MODEL_CHECKPOINT_SECONDS``
    (default 60)."""
    return positive_number("RESPONSE_MODEL_CHECKPOINT_SECONDS", 60)

