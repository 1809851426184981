"""The ``response-model`` command: a thin layer over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from response_model import __version__

log = logging.getLogger("response_model")

SIMULATED_LABEL = "research use — trained on simulated data"


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="response-model")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Predict response and primary resistance of advanced HCC to targeted therapies and
    immune checkpoint inhibitors, from the patient's genomic and clinical features."""
    _configure_logging(verbose)


@main.command()
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True, help="Number of patients.")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed; same seed, same files.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "cbioportal"]), default="parquet",
              show_default=True,
              help="parquet: DIR/cohort.parquet + DIR/truth.parquet; cbioportal: a cBioPortal study folder "
                   "(+ DIR/truth.parquet).")
@click.option("--config", default="simulator.yaml", show_default=True, help="Simulator configuration.")
def simulate(n: int, seed: int, out_dir: Path, fmt: str, config: str) -> None:
    """Simulate a cohort of patients with advanced HCC, with ground-truth probabilities."""
    from response_model.sources.simulator import simulate_cohort, write_simulation

    log.info("simulating %d patients (seed %d)", n, seed)
    written = write_simulation(simulate_cohort(n, seed, config=config), out_dir, fmt)
    for name, path in written.items():
        click.echo(f"{name}: {path}")


def _load(source: str, path: Path):
    from response_model.sources import SourceFormatError, load_source

    try:
        return load_source(source, path)
    except (SourceFormatError, FileNotFoundError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


@main.command()
@click.option("--source", required=True, help="Source configuration (YAML), e.g. configs/sources/chowell2022.yaml.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def validate(source: str, path: Path) -> None:
    """Validate a cohort file or folder: rows read, missingness, every rejected row.

    Exits 1 if any row is invalid, 2 if the file itself is malformed."""
    from response_model.validate import validation_report

    loaded = _load(source, path)
    click.echo(validation_report(loaded.parsed, source, str(path)))
    sys.exit(0 if loaded.parsed.ok else 1)


@main.command()
@click.option("--source", required=True, help="Source configuration (YAML).")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Canonical cohort Parquet file to write.")
def ingest(source: str, path: Path, out_file: Path) -> None:
    """Convert a cohort to the canonical Parquet table; writes nothing if any row is invalid."""
    from response_model.dataset import write_cohort
    from response_model.validate import validation_report

    loaded = _load(source, path)
    if not loaded.parsed.ok:
        click.echo(validation_report(loaded.parsed, source, str(path)), err=True)
        click.echo(f"error: {len(loaded.parsed.rejected)} invalid row(s); nothing written", err=True)
        sys.exit(1)
    write_cohort(loaded.parsed.frame(), out_file)
    click.echo(f"wrote {len(loaded.parsed.records)} rows to {out_file}")


@main.command()
def regimens() -> None:
    """List the regimen catalogue: class, mechanism, usual line, trial ORR, eligibility."""
    from response_model.regimens import load_catalogue

    for regimen in load_catalogue().values():
        trial = regimen.trial
        orr = f"ORR {trial['orr']:.1%} ({trial['name']})" if trial else "pan-cancer drug class"
        rules = "; ".join(rule.reason for rule in regimen.eligibility) or "-"
        line = f"line {regimen.usual_line}" if regimen.usual_line else ""
        click.echo(f"{regimen.name:<26} {regimen.regimen_class:<20} {regimen.category:<32} {line:<7} {orr:<28} {rules}")


@main.command()
@click.option("--n", "n", type=click.IntRange(min=100), default=5000, show_default=True, help="Simulated patients.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data/simulated"),
              show_default=True, help="Where the simulated cohort is written.")
def run(n: int, seed: int, out_dir: Path) -> None:
    """The main job on the embedded default: simulate a cohort, then validate it.

    Later stages (train, register, serve) extend this same command."""
    from response_model.sources import load_source
    from response_model.sources.simulator import simulate_cohort, write_simulation
    from response_model.validate import validation_report

    log.info("step 1/2: simulate %d patients (seed %d) into %s", n, seed, out_dir)
    written = write_simulation(simulate_cohort(n, seed), out_dir)
    log.info("step 2/2: validate %s", written["cohort"])
    loaded = load_source("sources/canonical.yaml", written["cohort"])
    click.echo(validation_report(loaded.parsed, "sources/canonical.yaml", str(written["cohort"])))
    click.echo(f"\nsimulated cohort, for research only: models trained on it are labelled '{SIMULATED_LABEL}'")
    sys.exit(0 if loaded.parsed.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
