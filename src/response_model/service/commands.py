"""Command-line commands for API keys and the audit trail, registered on the main CLI elsewhere:
``keys_group`` (``keys create | list | revoke``) and ``audit_group`` (``audit verify | checkpoint | export |
rotate-key | rotate-signing-key``)."""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from pathlib import Path

import click
import sqlalchemy as sa

from response_model.privacy import AuditKeyError, local_audit_key_file, rotate_local_audit_key
from response_model.service.audit import (
    EXPORT_COLUMNS,
    EXPORT_FORMATS,
    SHAP_PREFIX,
    AuditError,
    AuditTrail,
    FilterError,
    parse_filter,
    start_export,
)
from response_model.service.audit.checkpoints import new_signing_key
from response_model.service.keys import (
    DB_URL_ENV,
    DEFAULT_DB_FILE,
    ROLES,
    KeyStore,
    KeyStoreError,
)

_CONTEXT = {"help_option_names": ["-h", "--help"]}


@contextlib.contextmanager
def _clean_errors():
    """Turn expected failures (bad input, missing database or driver, unreachable server) into one line."""
    try:
        yield
    except (KeyStoreError, AuditError, AuditKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    except ImportError as exc:
        raise click.ClickException(f"the database driver is not installed: {exc}") from None
    except sa.exc.SQLAlchemyError as exc:
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"database error: {message}") from None


def _db_option(func):
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        default=None,
        help=(
            f"SQLAlchemy database URL. Default: ${DB_URL_ENV} if set, else sqlite:///./{DEFAULT_DB_FILE} "
            "in the working directory (e.g. postgresql+psycopg://user@host/dbname)."
        ),
    )(func)


@click.group("keys", context_settings=_CONTEXT)
def keys_group() -> None:
    """Manage API keys (bearer tokens with one role each: clinician, auditor, registrar or admin).

    Keys are stored only as salted hashes: a token is shown once, when it is created.
    """


@keys_group.command("create", context_settings=_CONTEXT)
@click.option("--role", required=True, type=click.Choice(ROLES), help="The key's role.")
@click.option(
    "--name",
    required=True,
    help="A label for the key's holder, e.g. 'ward-3 tablet'. Never a patient's name or record number.",
)
@_db_option
def keys_create(role: str, name: str, db_url: str | None) -> None:
    """Create a key and print its token (to stdout, alone) — the only time it is shown."""
    with _clean_errors(), KeyStore(db_url) as store:
        new = store.create(role, name)
    click.echo(
        f"Created API key {new.key_id} (role {role}, name {name!r}).\n"
        "WARNING: the token below is shown only once and cannot be recovered: store it now, "
        "in a password manager or secret store. Lost tokens are revoked and replaced.",
        err=True,
    )
    click.echo(new.token)


@keys_group.command("list", context_settings=_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@_db_option
def keys_list(as_json: bool, db_url: str | None) -> None:
    """List every key: id, role, name, created and revoked times (never tokens)."""
    with _clean_errors(), KeyStore(db_url, create=False) as store:
        keys = store.list()
    stamp = lambda t: t.strftime("%Y-%m-%d %H:%M:%SZ") if t else None  # noqa: E731
    if as_json:
        rows = [{"key_id": k.key_id, "role": k.role, "name": k.name, "created": k.created.isoformat(),
                 "revoked": k.revoked.isoformat() if k.revoked else None} for k in keys]
        click.echo(json.dumps(rows, indent=2))
        return
    if not keys:
        click.echo("no API keys", err=True)
        return
    header = ("KEY ID", "ROLE", "CREATED (UTC)", "STATUS", "NAME")
    rows = [(k.key_id, k.role, stamp(k.created), f"revoked {stamp(k.revoked)}" if k.revoked else "active", k.name)
            for k in keys]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + str(r[-1]))


@keys_group.command("revoke", context_settings=_CONTEXT)
@click.argument("key_id")
@_db_option
def keys_revoke(key_id: str, db_url: str | None) -> None:
    """Revoke the key KEY_ID (see `keys list`); it stops working at once."""
    with _clean_errors(), KeyStore(db_url, create=False) as store:
        before = store.get(key_id)
        info = store.revoke(key_id)  # UnknownKeyError is a KeyStoreError: exit 1 with its message
    if before is not None and before.revoked is not None:
        click.echo(f"API key {key_id} was already revoked at {info.revoked.isoformat()}")
    else:
        click.echo(f"revoked API key {key_id} ({info.role}, {info.name!r})")


@click.group("audit", context_settings=_CONTEXT)
def audit_group() -> None:
    """Check and export the tamper-evident audit trail of prediction requests."""


def _witness_option(func):
    return click.option(
        "--witness", metavar="PATH|URL", default=None,
        help="Where the signed checkpoints are: an append-only file or a SQLAlchemy URL of a second database. "
             "Default: $RESPONSE_MODEL_AUDIT_WITNESS, else .response-model/audit-checkpoints.jsonl.",
    )(func)


@audit_group.command("verify", context_settings=_CONTEXT)
@_db_option
@_witness_option
def audit_verify(db_url: str | None, witness: str | None) -> None:
    """Recompute the audit trail's keyed chain (HMAC-SHA-256) and check it against the signed checkpoints.

    Exits 0 when every record is intact and no checkpoint is contradicted, printing the number of
    records, how many are of the old unkeyed kind and the head MAC. Exits 1 naming the case (edited,
    deleted-middle, deleted-newest, swapped, forged, rehashed, bad-checkpoint), the record and why.
    Needs the audit keyring ($RESPONSE_MODEL_AUDIT_KEY) and the checkpoints' public keys.
    """
    with _clean_errors(), AuditTrail(db_url, create=False, witness=witness) as trail:
        result = trail.verify()
        where, witnessed = trail.url, repr(trail.witness)
    if result.legacy_through:
        click.echo(f"{result.n_legacy} records of the old, unkeyed kind (chain format 1): records 1–"
                   f"{result.legacy_through}; an edit or deletion among them shows, a rewrite by someone with "
                   "write access would not", err=True)
    if result.ok:
        click.echo(f"audit trail intact: {result.n_records} records in {where}"
                   + (f" (keys {', '.join(result.key_ids)})" if result.key_ids else ""))
        click.echo(f"checkpoints: {result.checkpoints} signed, verified, in the {witnessed}"
                   + (f"; the newest covers record {result.checkpoint_seq}" if result.checkpoint_seq else ""))
        if result.head_hash:
            click.echo(f"head MAC (record {result.n_records}): {result.head_hash}")
        return
    where_bad = f"at record {result.first_bad}" if result.first_bad is not None else "in its checkpoints"
    click.echo(f"audit trail BROKEN {where_bad} [{result.case}]: {result.reason} "
               f"({result.n_records} records read from {where})", err=True)
    sys.exit(1)


@audit_group.command("checkpoint", context_settings=_CONTEXT)
@_db_option
@_witness_option
def audit_checkpoint(db_url: str | None, witness: str | None) -> None:
    """Sign the trail's head (record, MAC, key id, time) with the checkpoint key and publish it to the witness.

    The service does this by itself every $RESPONSE_MODEL_CHECKPOINT_RECORDS records (default 1000),
    every $RESPONSE_MODEL_CHECKPOINT_SECONDS (default 60) and at shutdown; use this e.g. from cron, or
    before a backup.
    """
    with _clean_errors(), AuditTrail(db_url, create=False, witness=witness) as trail:
        checkpoint = trail.checkpoint()
        witnessed = repr(trail.witness)
    if checkpoint is None:
        click.echo("the audit trail is empty: nothing to sign", err=True)
        return
    click.echo(f"checkpoint of record {checkpoint.seq} (MAC {checkpoint.head}, chain key {checkpoint.key_id}) "
               f"signed by {checkpoint.signer} at {checkpoint.time}, published to the {witnessed}")


@audit_group.command("rotate-key", context_settings=_CONTEXT)
def audit_rotate_key() -> None:
    """Add a new chain key to the local audit keyring file (.response-model/audit.key or
    $RESPONSE_MODEL_AUDIT_KEY_FILE); older keys stay, to verify older records. Restart the service."""
    with _clean_errors():
        key = rotate_local_audit_key()
    click.echo(f"new audit chain key {key.key_id} appended to {local_audit_key_file()}; restart the service "
               "to sign new records with it (keep the older keys: they verify the older records)")


@audit_group.command("rotate-signing-key", context_settings=_CONTEXT)
def audit_rotate_signing_key() -> None:
    """Replace the checkpoint signing key; its public key is added to the trusted public keys, where the old
    ones stay, so that older checkpoints still verify. Restart the service."""
    with _clean_errors():
        key_id = new_signing_key()
    click.echo(f"new checkpoint signing key {key_id}; its public key was added to the trusted keys. "
               "Give verifiers the new public key file; restart the service")


CLI_EXPORT_ENDPOINT = "CLI audit export"


@audit_group.command("export", context_settings=_CONTEXT)
@_db_option
@click.option("--from", "from_", metavar="TIME", default=None,
              help="Start of the window, inclusive: ISO 8601 with a zone (2026-11-27T09:00:00Z, …+01:00) or a "
                   "date (00:00 UTC).")
@click.option("--to", metavar="TIME", default=None, help="End of the window, exclusive (same forms as --from).")
@click.option("--model-version", default=None, help="Only records made by this registered model version.")
@click.option("--regimen", default=None, help="Only predictions covering this regimen id (configs/regimens.yaml).")
@click.option("--status", type=click.Choice(("accepted", "rejected")), default=None,
              help="Only accepted or only rejected requests (default: both).")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default=None,
              help="csv or parquet (default: from the --out suffix, else csv).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (replaced if it exists).")
def audit_export(db_url, from_, to, model_version, regimen, status, fmt, out: Path) -> None:
    """Export the prediction records of a filter as one flat CSV or Parquet table.

    The same rows and columns as the API's GET /v1/predictions:export: one row per prediction ×
    regimen × outcome (a rejected request: one row with regimen and outcome empty) with time, key id
    and role, model name and version, input digest, patient pseudonym, probability, interval, band,
    rank, the explanation's scale and base value, and the SHAP value of every feature in wide
    columns shap.<feature>. The export itself is recorded in the audit trail (endpoint
    'CLI audit export', with the operating-system user, the filter and the number of records).
    """
    if fmt is None:
        fmt = "parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv"
    try:
        flt = parse_filter(from_=from_, to=to, model_version=model_version, regimen=regimen, status=status)
    except FilterError as exc:
        raise click.UsageError("\n".join(e["message"] for e in exc.errors)) from None
    with _clean_errors(), AuditTrail(db_url, create=False) as trail:
        export = start_export(trail, flt)
        trail.append({"endpoint": CLI_EXPORT_ENDPOINT, "status": "accepted", "http_status": 200,
                      "detail": {"access": "export", "os_user": _os_user(), "filter": flt.as_dict(),
                                 "format": fmt, "n_records": export.n_records, "through_seq": export.through_seq,
                                 "file": out.name}})
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as handle:
                for chunk in export.chunks(fmt):
                    handle.write(chunk)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    n_features = len(export.columns) - len(EXPORT_COLUMNS)
    click.echo(f"wrote {export.n_records} records ({fmt}, {len(export.columns)} columns of which "
               f"{n_features} {SHAP_PREFIX}<feature>) through record {export.through_seq} to {out}", err=True)


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return None
