"""``response-model outcomes import``: a registry extract of outcomes into the audit trail (registered lazily
on the main CLI as the ``outcomes`` group)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from response_model.config import load_yaml
from response_model.privacy import PseudonymKeyError
from response_model.service.audit import AuditTrail
from response_model.service.audit.outcomes import OUTCOME_IMPORT_ENDPOINT
from response_model.service.commands import _CONTEXT, _clean_errors, _db_option
from response_model.service.outcome_models import MAX_OUTCOME_BATCH
from response_model.service.outcomes import Caller, record_outcomes
from response_model.sources import SourceFormatError
from response_model.sources.outcome_tables import read_outcomes
from response_model.sources.tables import SourceSpecError


@click.group("outcomes", context_settings=_CONTEXT)
def outcomes_group() -> None:
    """Record what happened to patients after their predictions (outcomes, in the audit trail)."""


def _report(errors: list[dict], lines: list[int], columns: dict[str, str]) -> None:
    """Print every error of a refused import on stderr, by source line, with the column of its field."""
    for error in errors:
        field = str(error["field"]).split(".", 2)[-1]
        column = columns.get(field.split(".")[0])
        message = str(error["message"]).split(": ", 1)[-1]
        click.echo(f"line {lines[error['row']]}: {message}" + (f" [column {column!r}]" if column else ""), err=True)


@outcomes_group.command("import", context_settings=_CONTEXT)
@click.option("--source", "source", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The extract's source configuration (format: outcome_table; see "
                   "configs/sources/registry-outcomes.yaml).")
@_db_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def outcomes_import(source: Path, db_url: str | None, file: Path) -> None:
    """Validate every row of FILE (CSV, XLSX or Parquet) as an outcome and append them all to the audit trail.

    All or nothing: when any row is bad, each bad row is printed with its source line and the column at
    fault, nothing is stored, and the exit code is 1 — fix the file and import it again. Rows name their
    prediction by prediction_id, or the patient (patient_id, raw: pseudonymised with
    $RESPONSE_MODEL_PSEUDONYM_KEY, never stored; or patient_pseudonym) and the regimen. Each outcome is a
    record of the trail (endpoint 'CLI outcomes import', role registrar).
    """
    try:
        table = read_outcomes(load_yaml(source), file)
    except (SourceSpecError, SourceFormatError) as exc:
        raise click.ClickException(str(exc)) from None
    for warning in table.warnings:
        click.echo(f"warning: {warning}", err=True)
    if table.problems:
        for line, problem in sorted(table.problems.items()):
            click.echo(f"line {line}: {problem}", err=True)
        click.echo(f"nothing stored: {len(table.problems)} row(s) of {file.name} cannot be read", err=True)
        sys.exit(1)
    if len(table.rows) > MAX_OUTCOME_BATCH:
        raise click.ClickException(f"{len(table.rows)} rows; at most {MAX_OUTCOME_BATCH} per import "
                                   "(split the file)")
    with _clean_errors(), AuditTrail(db_url, create=False) as trail:
        try:
            status, answer = record_outcomes(trail, table.rows, Caller(OUTCOME_IMPORT_ENDPOINT, None, "registrar"),
                                             batch=True)
        except PseudonymKeyError as exc:
            raise click.ClickException(str(exc)) from None
    if status != 200:
        _report(answer["errors"], table.lines, table.columns)
        click.echo(f"nothing stored: {answer['n_refused_rows']} of {answer['n_rows']} rows of {file.name} "
                   "refused (the refusal is recorded in the audit trail)", err=True)
        sys.exit(1)
    seqs = [o["seq"] for o in answer["outcomes"]]
    click.echo(f"stored {answer['n_stored']} outcomes from {file.name} in {trail.url} "
               f"(audit records {min(seqs)}–{max(seqs)})")
