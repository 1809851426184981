"""Cohort sources. Each turns a file or folder into the canonical cohort table (see ``dataset``).

A source configuration (YAML under ``configs/sources/``) names its ``format``:
``table`` (CSV / Parquet / XLSX with a column mapping), ``cbioportal`` (a study folder) or
``canonical`` (a Parquet file written by this package). :func:`load_source` dispatches on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from response_model.dataset import ParsedCohort
from response_model.errors import InputError


class SourceFormatError(InputError):
    """A malformed input file: names the file, and where known the line and column."""

    def __init__(self, file: str | Path, message: str, line: int | None = None, column: str | None = None):
        self.file, self.line, self.column, self.reason = str(file), line, column, message
        where = str(file)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


@dataclass
class LoadedCohort:
    """A validated cohort read from a source: the parse result and where it came from."""

    source: str
    path: Path
    parsed: ParsedCohort


def load_source(config: str | Path, path: str | Path) -> LoadedCohort:
    """Read ``path`` through the source configuration ``config`` and validate every row.

    The configuration is checked against its format's schema first (:mod:`response_model.settings`):
    a misspelt key raises :class:`response_model.errors.ConfigError` naming file, key and the nearest valid key.
    """
    from response_model.settings import load_source_config

    spec = load_source_config(config)
    kind = spec.get("format")
    if kind == "table":
        from response_model.sources.tables import read_table

        parsed = read_table(spec, path)
    elif kind == "cbioportal":
        from response_model.sources.cbioportal import read_study

        parsed = read_study(spec, path)
    elif kind == "canonical":
        from response_model.dataset import parse_cohort, read_cohort

        parsed = _numbered(parse_cohort(read_cohort(_canonical_file(config, Path(path)))))
    else:  # pragma: no cover - load_source_config refuses other formats
        raise ValueError(f"{config}: format {kind!r} is not one of table, cbioportal, canonical")
    return LoadedCohort(source=str(config), path=Path(path), parsed=parsed)


def _numbered(parsed: ParsedCohort) -> ParsedCohort:
    """Number the rejected rows of a Parquet file 1-based (first data row = 1), as a Parquet file read
    through a table source is (``line`` = row index + 1); CSV sources give the file line (header = 1)."""
    from dataclasses import replace

    parsed.rejected = [replace(e, line=e.row + 1) if e.line is None else e for e in parsed.rejected]
    return parsed


def _canonical_file(config: str | Path, path: Path) -> Path:
    """Return ``path`` if it is a Parquet file; raises SourceFormatError saying which source fits instead."""
    hint = (f"{config} reads the canonical Parquet table written by `response-model simulate` or `ingest`; "
            "for a CSV, XLSX or other table use a table source (e.g. --source configs/sources/example_hospital.yaml, "
            "or your own mapping), for a cBioPortal study folder --source configs/sources/cbioportal.yaml")
    if path.is_dir():
        raise SourceFormatError(path, f"a folder, not a Parquet file; {hint}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PAR1":
        raise SourceFormatError(path, f"not a Parquet file; {hint}", line=1)
    return path
