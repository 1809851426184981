"""A normal run prints no known-harmless setuptools or MLflow warnings, and log lines are not written into
the progress bars' lines."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent

DEMO = r'''
import logging, time, warnings
import click
from tqdm import tqdm
from response_model import cli

@cli.main.command()
def demo():
    log = logging.getLogger("response_model.modeling.cv")
    for k in tqdm(range(3), desc="cross-validation", unit="fold", mininterval=0):
        time.sleep(0.05)
        log.info("fold %d/3: project AUC 0.7", k + 1)
    logging.getLogger("mlflow.pyfunc").warning("Passing a Python object as `python_model` causes it to be "
                                               "serialized using CloudPickle, it requires exercising caution")
    logging.getLogger("mlflow.pyfunc").warning("a warning that is not known to be harmless")
    warnings.warn("The specified dataset source can be interpreted in multiple ways: LocalArtifactDatasetSource",
                  UserWarning)

cli.main(["demo"])
'''


def test_log_lines_are_not_written_into_a_progress_bar_and_known_notices_are_quiet():
    result = subprocess.run([sys.executable, "-c", DEMO], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.replace("\r", "\n").splitlines()
    logged = [line for line in lines if "project AUC" in line]
    assert len(logged) == 3 and all(line.split(" ", 1)[1].startswith("INFO") for line in logged), result.stderr
    assert "CloudPickle" not in result.stderr and "interpreted in multiple ways" not in result.stderr
    assert "not known to be harmless" in result.stderr


def test_the_package_metadata_makes_setuptools_print_no_license_deprecation():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)  # an SPDX expression, not the deprecated table
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])
