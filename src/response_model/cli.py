"""The ``response-model`` command: a thin layer over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from response_model import __version__
from response_model.errors import (
    EXIT_CODES_HELP,
    EXIT_MODEL,
    EXIT_USAGE,
    ResponseModelError,
)

log = logging.getLogger("response_model")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_known_warnings()


#: MLflow messages every normal run prints and that say nothing about the run (logger → message start)
_KNOWN_HARMLESS_LOGS = {
    # log_bundle logs our own pyfunc class: the bundle is meant to be pickled (see modeling/bundle.py)
    "mlflow.pyfunc": ("Passing a Python object as `python_model` causes it to be serialized using CloudPickle",),
}
#: Python warnings every normal run prints: message regex
_KNOWN_HARMLESS_WARNINGS = (
    # tracking.log_dataset passes a local path; MLflow picks LocalArtifactDatasetSource, which is right
    r"The specified dataset source can be interpreted in multiple ways",
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_warnings() -> None:
    """Silence the specific, known-harmless MLflow notices and warnings of a normal run (and MLflow's
    "Creating initial MLflow database tables..." INFO lines); every other warning still shows."""
    import warnings

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    for name, starts in _KNOWN_HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))
    for message in _KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


class _LazyGroup(click.Group):
    """A command group whose ``lazy`` subcommands are imported when first named (or listed in --help):
    the key and audit commands import SQLAlchemy, which every other command, and each Dask worker
    process that re-imports this module, would otherwise pay for (≈ 0.2 s)."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attribute = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        """Run the command; an error the user can fix ends it with one line on stderr and its exit code.

        Log lines go through tqdm while it runs, so that they are not written into a progress bar's line."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        _configure_logging(bool(ctx.params.get("verbose")))  # before the redirect, which wraps its handler
        try:
            with logging_redirect_tqdm():
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - translated when known, re-raised otherwise
            code = _exit_code(error)
            if code is None:
                raise
            raise CommandError(str(error), code) from error


class CommandError(click.ClickException):
    """One line on stderr (``error: …``) and the exit code of :mod:`response_model.errors`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(" ".join(message.split()) or "failed")
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _exit_code(error: Exception) -> int | None:
    """Return the exit code of an error the user can fix (see :mod:`response_model.errors`), None for a bug.

    Besides this package's own errors: a missing file (2), and the errors of modules already imported by
    the command — batch input (2), report and service start-up without a model (3), and MLflow's
    "not found" (3)."""
    if isinstance(error, ResponseModelError):
        return error.exit_code
    if isinstance(error, FileNotFoundError):
        return EXIT_USAGE
    named = {("response_model.modeling.batch", "BatchInputError"): EXIT_USAGE,
             ("response_model.report", "ReportError"): EXIT_MODEL,
             ("response_model.service.app", "ModelUnavailableError"): EXIT_MODEL}
    for (module, name), code in named.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return code
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(error, mlflow_exceptions.MlflowException) \
            and getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
        return EXIT_MODEL
    return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP,
             lazy={"keys": "response_model.service.commands:keys_group",
                   "audit": "response_model.service.commands:audit_group",
                   "trials": "response_model.trials.commands:trials_group",
                   "monitor": "response_model.monitoring.commands:monitor_command",
                   "outcomes": "response_model.service.outcome_commands:outcomes_group"})
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
    from response_model.sources import load_source

    return load_source(source, path)


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
@click.option("--config", "config_path", default="configs/train/default.yaml", show_default=True,
              help="Training configuration (YAML).")
@click.option("--data", "data_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cohort file or folder (read through the config's source); default: the config's data.")
@click.option("--no-register", is_flag=True, help="Log the model without registering it.")
@click.option("--dask-scheduler", default=None,
              help="Dask scheduler address (tcp://HOST:8786): folds, search trials and large LightGBM fits run "
                   "on that cluster; tracking stays here. Default: this machine.")
def train(config_path: str, data_path: Path | None, no_register: bool, dask_scheduler: str | None) -> None:
    """Train, evaluate (repeated CV against the baselines) and register the response and resistance models."""
    from response_model.modeling.train import train as run_training

    result = run_training(config_path, data_path, register=not no_register, dask_scheduler=dask_scheduler)
    _print_training(result)


def _print_training(result) -> None:
    click.echo(f"run: {result.run_id}")
    click.echo(f"model: {result.model_uri}")
    if result.registered_version:
        click.echo(f"registered: models:/{result.registered_name}/{result.registered_version}")
    label = result.bundle.metadata.get("label")
    if label:
        click.echo(f"label: {label}")
    click.echo(f"training took {result.seconds:.0f} s")


def _gate(config_path: str) -> tuple[dict, dict | None]:
    from response_model.settings import gate_of, load_training_config

    gate = gate_of(load_training_config(config_path), config_path)
    compare = gate.pop("not_worse_than_champion", True)
    return gate, ({"metrics": ["auc"]} if compare else {"metrics": []})


@main.command()
@click.option("--name", required=True, help="Registered model name.")
@click.option("--version", "version", required=True, help="Candidate version.")
@click.option("--config", "config_path", default="configs/train/default.yaml", show_default=True,
              help="Configuration holding the promotion gate.")
@click.option("--source", default=None, help="With PATH: compare candidate and champion on this held-out cohort.")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
def promote(name: str, version: str, config_path: str, source: str | None, path: Path | None) -> None:
    """Move the 'champion' alias to a version that passes the gate and is not worse than the champion.

    Exits 1, saying why, when the promotion is refused."""
    from response_model import tracking
    from response_model.modeling import registry

    tracking.configure_tracking()
    gate, evaluation = _gate(config_path)
    registry.require_model(f"models:/{name}/{version}")
    if source and path:
        loaded = _load(source, path)
        candidate = registry.evaluate(f"models:/{name}/{version}", loaded.parsed)
        try:
            champion = registry.evaluate(f"models:/{name}@champion", loaded.parsed)
            evaluation = {"candidate": candidate, "champion": champion}
        except Exception as error:  # noqa: BLE001 - no champion yet: the gate alone decides
            log.info("no champion to compare with (%s)", error)
    decision = registry.promote(name, version, gate, evaluation)
    click.echo(str(decision))
    sys.exit(0 if decision.promoted else 1)


@main.command()
@click.option("--model-uri", required=True, help="models:/NAME@champion, models:/NAME/V, runs:/… or a folder.")
@click.option("--source", required=True, help="Source configuration (YAML) of the labelled cohort.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def evaluate(model_uri: str, source: str, path: Path) -> None:
    """Score a labelled cohort the model never saw; print one JSON object of metrics.

    Per outcome: AUC, AUPRC, Brier, calibration slope (resistance: also the c-index against PFS), the
    labelled n and events, 95 % intervals (percentile bootstrap over patients, 1,000 resamples, seeded);
    the same per regimen class under by_regimen_class."""
    import json

    from response_model import tracking
    from response_model.modeling import registry
    tracking.configure_tracking()
    loaded = _load(source, path)
    for notice in loaded.parsed.notices:
        click.echo(f"notice: {notice}", err=True)
    if not loaded.parsed.ok:
        click.echo(f"warning: {len(loaded.parsed.rejected)} invalid row(s) not scored; see `response-model "
                   "validate`", err=True)
    report = registry.evaluation_report(model_uri, loaded.parsed)
    if "regimen_unrecorded" in report:
        click.echo(f"warning: {report['regimen_unrecorded']['n']} patient(s) without a regimen: "
                   f"{report['regimen_unrecorded']['note']}", err=True)
    click.echo(json.dumps(report))


@main.command()
@click.option("--model-uri", required=True, help="models:/NAME@champion, models:/NAME/V or runs:/…")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New folder, e.g. models/hcc-response-v3/.")
def export(model_uri: str, out_dir: Path) -> None:
    """Write a self-contained MLflow model folder that serves without the tracking server."""
    from response_model import tracking
    from response_model.modeling import registry

    tracking.configure_tracking()
    click.echo(f"exported to {registry.export(model_uri, out_dir)}")


@main.command()
@click.option("--model-uri", required=True,
              help="models:/NAME@champion, models:/NAME/V, runs:/… or an exported folder.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write, e.g. reports/hcc-response-v3.html.")
@click.option("--no-log", is_flag=True, help="Do not log the report to the model's MLflow run.")
def report(model_uri: str, out_file: Path, no_log: bool) -> None:
    """Write the validation report and model card (self-contained HTML) and log it to the model's run."""
    from response_model import tracking
    from response_model.modeling.registry import require_model
    from response_model.report import REPORT_ARTIFACT, write_report

    tracking.configure_tracking()
    require_model(model_uri)
    path, run_id = write_report(model_uri, out_file, log=not no_log)
    click.echo(f"wrote {path}")
    if not no_log:
        click.echo(f"logged to run {run_id} as {REPORT_ARTIFACT}")


@main.command()
@click.option("--model-uri", required=True,
              help="models:/NAME@champion, models:/NAME/V, runs:/… or an exported folder.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Cohort file: Parquet or CSV with the patient-record columns of the canonical table (any size).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Scores to write: .parquet or .csv (one row per patient × regimen).")
@click.option("--explain", is_flag=True, help="Add every feature's SHAP value per outcome (shap_<outcome>__<feature>).")
@click.option("--intervals", is_flag=True, help="Add each row's per-patient interval (p_<outcome>_lower/_upper, "
              "interval_level); several times slower.")
@click.option("--scheduler", default=None, help="Dask scheduler address (tcp://HOST:8786); default: a local cluster.")
@click.option("--source", default=None, help="Source configuration for a non-canonical table (read whole into memory).")
@click.option("--partition-rows", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Patients per Dask task; peak memory grows with it, not with the cohort.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster (default: CPU count, at most 4).")
@click.option("--allow-rejected", is_flag=True,
              help="Exit 0 even when some rows were rejected (they are still reported).")
@click.option("--unrecorded-regimen/--no-unrecorded-regimen", default=None,
              help="Also one row per patient and regimen class with regimen 'unrecorded': the estimate averaged "
                   "over the class's regimens weighted by their training prevalence. Default: on when a --source "
                   "table records no regimen.")
def score(model_uri: str, input_path: Path, output_path: Path, explain: bool, intervals: bool, scheduler: str | None,
          source: str | None, partition_rows: int, workers: int | None, allow_rejected: bool,
          unrecorded_regimen: bool | None) -> None:
    """Score a cohort file with Dask: probabilities, eligibility and rank per regimen, optionally SHAP values.

    Invalid rows are written with their row number and reasons to OUTPUT.rejected.csv; the command
    then exits 1 (0 with --allow-rejected). Exits 2 if the input cannot be read."""
    from response_model import tracking
    from response_model.modeling.batch import score_file
    from response_model.modeling.registry import require_model

    tracking.configure_tracking()
    require_model(model_uri)
    result = score_file(model_uri, input_path, output_path, explain=explain, intervals=intervals,
                        scheduler=scheduler, source=source, partition_rows=partition_rows, n_workers=workers,
                        unrecorded_regimen=unrecorded_regimen)
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    click.echo(f"scored {result.n_scored} of {result.n_read} patients: {result.n_rows} rows in {output_path} "
               f"({result.seconds:.1f} s, {result.scores_per_second:.0f} patient-regimen scores/s)")
    if result.n_rejected:
        for line in result.rejected_preview:
            click.echo(f"  rejected {line}", err=True)
        click.echo(f"{result.n_rejected} row(s) rejected; every one with its reasons in {result.rejected_path}",
                   err=True)
        sys.exit(0 if allow_rejected else 1)


@main.command()
@click.option("--model-uri", default=None,
              help="Model to serve; default $RESPONSE_MODEL_URI, else models:/hcc-response@champion. "
                   "An exported folder under models/ serves without the tracking store.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--db", "db_url", default=None, help="SQLAlchemy URL of the keys and audit store; default service.db.")
@click.option("--fallback-model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="RESPONSE_MODEL_FALLBACK_MODEL_DIR", show_envvar=True,
              help="Exported model folder (response-model export) served, loudly labelled, when the model URI "
                   "cannot be loaded at start-up (tracking server unreachable). Without it the service exits.")
def serve(model_uri: str | None, host: str, port: int, db_url: str | None, fallback_model_dir: Path | None) -> None:
    """Serve predictions over HTTP (FastAPI): API keys, a durable audit trail, the model loaded once."""
    import os

    import mlflow

    from response_model import tracking
    from response_model.service.app import serve as run_service

    # only point MLflow at the store: serving creates no experiment, and an unreachable tracking server
    # is the service's to handle (fallback folder, or exit naming the URI and the error)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if fallback_model_dir is None:
        _require_servable(model_uri)
    run_service(model_uri, host=host, port=port, db_url=db_url, fallback_model_dir=fallback_model_dir)


def _require_servable(model_uri: str | None) -> None:
    """Stop before starting the server when the store answers that the model does not exist (exit 3);
    an unreachable store is left to the service, which says so."""
    from mlflow.exceptions import MlflowException

    from response_model.modeling.registry import require_model
    from response_model.service.holder import default_model_uri

    try:
        require_model(model_uri or default_model_uri())
    except MlflowException as error:
        log.debug("cannot check the model before serving: %s", error)


@main.command()
@click.option("--n", "n", type=click.IntRange(min=100), default=5000, show_default=True, help="Simulated patients.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data/simulated"),
              show_default=True, help="Where the simulated cohort is written.")
@click.option("--config", "config_path", default="configs/train/default.yaml", show_default=True,
              help="Training configuration.")
@click.option("--serve/--no-serve", "then_serve", default=True, show_default=True,
              help="End by serving the champion (with a new clinician API key printed once).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def run(n: int, seed: int, out_dir: Path, config_path: str, then_serve: bool, host: str, port: int) -> None:
    """The main job on the embedded default: simulate a cohort, validate it, train, register, promote,
    then serve the champion on http://HOST:PORT (the API, its documentation at /docs, the page at /)."""
    from response_model import tracking
    from response_model.modeling import registry
    from response_model.modeling.train import train as run_training
    from response_model.privacy import (
        PSEUDONYM_KEY_ENV,
        ensure_local_audit_key,
        ensure_local_key,
        local_audit_key_file,
        local_key_file,
    )
    from response_model.service.audit.checkpoints import ensure_local_signing_key
    from response_model.sources import load_source
    from response_model.sources.simulator import simulate_cohort, write_simulation
    from response_model.validate import validation_report

    if ensure_local_key():  # the one key every later command run from this folder finds (privacy.pseudonym_key)
        log.warning("created a local pseudonymisation key in %s; every command run from this folder uses it "
                    "(set %s in production, from a secret store)", local_key_file(), PSEUDONYM_KEY_ENV)
    if ensure_local_audit_key() | ensure_local_signing_key():  # the audit trail's keys, outside its database
        log.warning("created the audit trail's local keys (chain key %s, checkpoint signing key beside it); "
                    "in production they come from a secret store (docs/audit-trail.md)", local_audit_key_file())
    log.info("step 1/5: simulate %d patients (seed %d) into %s", n, seed, out_dir)
    written = write_simulation(simulate_cohort(n, seed), out_dir)
    log.info("step 2/5: validate %s", written["cohort"])
    loaded = load_source("sources/canonical.yaml", written["cohort"])
    click.echo(validation_report(loaded.parsed, "sources/canonical.yaml", str(written["cohort"])))
    if not loaded.parsed.ok:
        sys.exit(1)
    log.info("step 3/5: train, evaluate and register (%s)", config_path)
    result = run_training(config_path, written["cohort"])
    _print_training(result)
    log.info("step 4/5: promote version %s", result.registered_version)
    gate, evaluation = _gate(config_path)
    decision = registry.promote(result.registered_name, result.registered_version, gate, evaluation)
    click.echo(str(decision))
    click.echo(f"\nmodel URI: models:/{result.registered_name}@champion" if decision.promoted else
               f"\nmodel URI: models:/{result.registered_name}/{result.registered_version} (not promoted)")
    click.echo(f"browse the runs: mlflow ui --backend-store-uri {tracking.configure_tracking()}")
    if not decision.promoted:
        sys.exit(1)
    if then_serve:
        _serve_champion(f"models:/{result.registered_name}@champion", host, port)


def _serve_champion(model_uri: str, host: str, port: int) -> None:
    """Step 5 of ``run``: a clinician API key (printed once), then serve (the pseudonymisation key was
    made sure of at the start of ``run``)."""
    from response_model.service.app import serve as run_service
    from response_model.service.keys import KeyStore

    with KeyStore() as store:
        created = store.create("clinician", "response-model run (local)")
    base = f"http://{host}:{port}"
    click.echo(f"\nclinician API key (shown once; `response-model keys revoke {created.key_id}` to revoke): "
               f"{created.token}")
    click.echo(f"page: {base}/   API documentation: {base}/docs\n"
               f"curl -s -H 'Authorization: Bearer {created.token}' -H 'Content-Type: application/json' "
               f"-d '{{\"patient\": {{\"age\": 64, \"sex\": \"male\", \"albumin\": 3.6}}}}' {base}/v1/predictions")
    log.info("step 5/5: serve %s on %s (Ctrl-C stops)", model_uri, base)
    run_service(model_uri, host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    main()
