"""Shared fixtures. Simulated cohorts are session-scoped: simulate once, use everywhere."""

import pytest


@pytest.fixture(scope="session")
def simulated_small():
    """A simulated cohort of 2,000 patients (seed 7): ``SimulatedCohort`` with ``cohort`` and ``truth``."""
    from response_model.sources.simulator import simulate_cohort

    return simulate_cohort(2000, seed=7)
