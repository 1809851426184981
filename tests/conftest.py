"""Shared fixtures. Simulated cohorts are session-scoped: simulate once, use everywhere."""

import os

import pytest


def require_service(env_var: str, what: str) -> str:
    """The value of ``env_var`` (a URL or path of a service the test needs).

    Where it is unset the test is skipped with the reason, except under ``.ci/run``
    (``RESPONSE_MODEL_REQUIRE_SERVICES=1``), which starts every service: there it fails.
    """
    value = os.environ.get(env_var)
    if not value:
        message = f"no {what}: set {env_var}"
        if os.environ.get("RESPONSE_MODEL_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (.ci/run should have started it)")
        pytest.skip(message)
    return value


@pytest.fixture(scope="session")
def simulated_small():
    """A simulated cohort of 2,000 patients (seed 7): ``SimulatedCohort`` with ``cohort`` and ``truth``."""
    from response_model.sources.simulator import simulate_cohort

    return simulate_cohort(2000, seed=7)
