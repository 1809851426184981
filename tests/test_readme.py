"""The README's `response-model …` examples run as written.

Every `response-model` line of the README's bash blocks is run for real, in order, as a separate
process, in a fresh folder laid out like the repository root after `make run` (``configs`` and
``tests/data`` linked in, ``../shared`` linked when it exists), and must exit 0. The few that cannot
run here are listed in HEAVY with the reason; the training config is swapped for a tiny test config
(``tests/data/train_tiny.yaml``: same keys, registered under the same name) so that the sequence takes
minutes, not hours.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"

#: command prefix → why it is not run here
HEAVY = {
    "response-model train --config configs/train/chowell2022.yaml": "trains on the real cohort (minutes)",
    "response-model serve": "serves until stopped (tests/test_service.py and test_cli_errors.py cover it)",
    "response-model audit verify": "verifies the audit trail the served requests write, and `serve` is not run here",
}
#: the README's training config → the tiny test config (same keys, 2 folds), same model name
SWAPPED_CONFIG = "configs/train/default.yaml"
TEST_CONFIG = ROOT / "tests" / "data" / "train_tiny.yaml"


def readme_commands() -> list[str]:
    """Return the README's `response-model …` command lines (bash blocks only), comments stripped."""
    commands, in_bash = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if in_bash and line.startswith("response-model "):
            commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def _skip_reason(command: str) -> str | None:
    for prefix, reason in HEAVY.items():
        if command.startswith(prefix):
            return reason
    if "../shared/" in command and not SHARED.is_dir():
        return "the shared data folder ../shared is absent"
    return None


def test_the_readme_says_how_to_call_the_installed_command():
    text = README.read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text and ".venv/bin/response-model" in text


def test_the_readme_lists_the_main_commands():
    named = {command.split()[1] for command in readme_commands()}
    assert {"run", "simulate", "validate", "ingest", "train", "promote", "evaluate", "export", "score",
            "report", "regimens", "serve", "keys", "audit"} <= named


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "configs").symlink_to(ROOT / "configs")
    (folder / "tests").mkdir()
    (folder / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    tiny = TEST_CONFIG.read_text(encoding="utf-8")
    swapped = folder / "train-tiny-as-default.yaml"
    swapped.write_text(tiny.replace("registered_model: hcc-smoke", "registered_model: hcc-response"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RESPONSE_MODEL_PSEUDONYM_KEY", "RESPONSE_MODEL_PSEUDONYM_KEY_FILE",
                        "RESPONSE_MODEL_URI", "RESPONSE_MODEL_DB_URL")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")

    ran, skipped, outputs = [], {}, {}
    for command in readme_commands():
        reason = _skip_reason(command)
        if reason:
            skipped[command] = reason
            continue
        args = shlex.split(command)[1:]
        args = [str(swapped) if a == SWAPPED_CONFIG else a for a in args]
        if args[0] == "run":  # run's own defaults: 5,000 patients and configs/train/default.yaml
            args += ["--n", "1200", "--config", str(swapped)]
        result = subprocess.run([sys.executable, "-m", "response_model.cli", *args], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, \
            f"{command}\nexit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append(command)
        outputs[args[0]] = result.stdout + result.stderr  # the last of each command
    assert len(ran) >= 15, ran
    assert set(skipped) <= {c for c in readme_commands() if _skip_reason(c)}
    assert (folder / ".response-model" / "pseudonym.key").is_file()
    assert (folder / "reports" / "hcc-response.html").is_file() and (folder / "data" / "scores.parquet").is_file()
    _check_what_the_commands_said(outputs)
    _check_a_gate_that_cannot_pass_refuses(folder, env)


def _check_what_the_commands_said(outputs: dict[str, str]) -> None:
    """`run` says what it did and what the model is; `evaluate` on the held-out cohort the model never
    saw prints its metrics as JSON (last line)."""
    run = outputs["run"]
    for said in ("rows valid: 1200", "label: research use — trained on simulated data",
                 "hcc-response version 1 promoted to champion", "model URI: models:/hcc-response@champion"):
        assert said in run, f"`run` did not say {said!r}:\n{run[-3000:]}"
    answer = json.loads(outputs["evaluate"].strip().splitlines()[-1])
    assert answer["n"] == 600 and 0.55 < answer["response"]["auc"] < 0.9
    assert answer["resistance"]["c_index"] > 0.5


def _check_a_gate_that_cannot_pass_refuses(folder: Path, env: dict[str, str]) -> None:
    """Promoting against a gate no model passes exits 1 naming the version and the failed item."""
    strict = folder / "strict.yaml"
    tiny = TEST_CONFIG.read_text(encoding="utf-8")
    strict.write_text(tiny.replace("registered_model: hcc-smoke", "registered_model: hcc-response")
                      .replace("auc_lower: 0.3", "auc_lower: 0.99"))
    result = subprocess.run([sys.executable, "-m", "response_model.cli", "promote", "--name", "hcc-response",
                             "--version", "2", "--config", str(strict)],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-3000:]
    assert "hcc-response version 2 refused" in said and "auc_lower" in said and "fails" in said, said[-3000:]
