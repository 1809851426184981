"""Sample size of a biomarker-subset trial, analytic and checked by Monte-Carlo.

Two designs per target power (``configs/trial_design.yaml``):

* **enrichment** — only the subset is enrolled: two proportions (objective response, primary resistance)
  by the power of the pooled two-proportion z-test (exact over the arms' binomial counts up to
  :data:`EXACT_MAX_PER_ARM` per arm, statsmodels' ``power_proportions_2indep`` above), or PFS events by
  Schoenfeld's formula;
  patients screened = enrolled / prevalence among tested;
* **all-comers** — everyone is enrolled, randomisation stratified by subset status; the overall effect is
  the primary hypothesis and the subset's effect a secondary one, α split by fixed sequence (the subset
  tested at α only after the overall test rejects — its power is then that of both rejecting, from the
  two differences' joint normal distribution) or Bonferroni. The trial is as large as the larger of the
  two hypotheses needs.

:func:`simulate_power` runs the designed trial many times on patients drawn from the simulator (their
true probabilities under both arms), randomised 1:1, outcomes drawn, analysed with the two-sided pooled
two-proportion z-test, and reports the share of trials that reject beside the analytic power.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import binom, multivariate_normal, norm
from statsmodels.stats.proportion import power_proportions_2indep

from response_model.config import load_yaml
from response_model.trials.rates import RESPONSE_ENDPOINTS, ArmRates, DesignError, TruthPool

ENDPOINTS = (*RESPONSE_ENDPOINTS, "pfs")
ALPHA_SPLITS = ("fixed_sequence", "bonferroni")


def design_defaults() -> dict:
    """The defaults of ``configs/trial_design.yaml``."""
    return dict(load_yaml("trial_design.yaml"))


@dataclass(frozen=True)
class DesignSpec:
    """What to design: subset, arm, comparator, endpoint and the statistical assumptions. PFS needs the
    arm-vs-comparator hazard ratio in the subset and the comparator's median PFS (months)."""

    subset: str
    arm: str
    comparator: str
    endpoint: str = "objective_response"
    alpha: float = 0.05
    powers: tuple[float, ...] = (0.8, 0.9)
    alpha_split: str = "fixed_sequence"
    primary_alpha_share: float = 0.8
    hazard_ratio: float | None = None
    hazard_ratio_outside: float = 1.0
    control_median_months: float | None = None
    accrual_months: float = 24.0
    follow_up_months: float = 12.0
    max_patients: int = 1_000_000

    @classmethod
    def with_defaults(cls, subset: str, arm: str, comparator: str, **given) -> DesignSpec:
        """A spec with ``configs/trial_design.yaml``'s defaults for everything not ``given`` (None = default)."""
        defaults = {k: v for k, v in design_defaults().items() if k in cls.__dataclass_fields__}
        chosen = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        chosen["powers"] = tuple(float(p) for p in chosen.get("powers", (0.8, 0.9)))
        return cls(subset, arm, comparator, **chosen).checked()

    def checked(self) -> DesignSpec:
        """Return self; raises DesignError naming the first field that is not usable."""
        if self.arm == self.comparator:
            raise DesignError(f"comparator {self.comparator!r} is the arm itself; expected a different regimen")
        if self.endpoint not in ENDPOINTS:
            from response_model.settings import suggestion

            raise DesignError(f"endpoint {self.endpoint!r} is not one of {', '.join(ENDPOINTS)}"
                              f"{suggestion(self.endpoint, ENDPOINTS)}")
        if self.alpha_split not in ALPHA_SPLITS:
            raise DesignError(f"alpha_split {self.alpha_split!r} is not one of {', '.join(ALPHA_SPLITS)}")
        if not 0 < self.alpha < 1 or not 0 < self.primary_alpha_share < 1:
            raise DesignError(f"alpha {self.alpha!r} and primary_alpha_share {self.primary_alpha_share!r}: "
                              "expected numbers between 0 and 1")
        if not self.powers or any(not self.alpha < p < 1 for p in self.powers):
            raise DesignError(f"powers {list(self.powers)!r}: expected numbers between alpha and 1")
        if self.endpoint == "pfs":
            self._check_pfs()
        return self

    def _check_pfs(self) -> None:
        if self.hazard_ratio is None:
            raise DesignError("endpoint pfs needs the hazard ratio arm vs comparator in the subset "
                              "(--hazard-ratio, e.g. 0.6)")
        for name in ("hazard_ratio", "hazard_ratio_outside", "accrual_months", "follow_up_months"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DesignError(f"{name}: {value!r}; expected a positive number")
        if self.hazard_ratio == 1:
            raise DesignError("hazard_ratio: 1 means no effect in the subset; no number of events gives power")

    def alphas(self) -> tuple[float, float]:
        """(α of the overall test, α of the subset test) of the all-comers design."""
        if self.alpha_split == "bonferroni":
            return self.alpha * self.primary_alpha_share, self.alpha * (1 - self.primary_alpha_share)
        return self.alpha, self.alpha


@dataclass(frozen=True)
class SampleSize:
    """One design at one target power. ``n_total`` patients randomised 1:1 (``n_subset`` of them in the
    subset), ``n_screened`` tested to find them, ``events`` for PFS; ``power_overall`` / ``power_subset``
    the analytic power of each hypothesis at that size; None with ``note`` when not reachable."""

    design: str  # enrichment | all_comers
    target_power: float
    n_total: int | None
    n_subset: int | None
    n_screened: int | None
    events: int | None
    alpha_overall: float | None
    alpha_subset: float
    power_overall: float | None
    power_subset: float | None
    note: str = ""


@dataclass
class TrialDesign:
    """The designs of one spec from its rates, with the warnings a report must show."""

    spec: DesignSpec
    rates: ArmRates
    sizes: list[SampleSize]
    warnings: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per design × target power (the columns of :class:`SampleSize`)."""
        return pd.DataFrame([asdict(size) for size in self.sizes])

    def size(self, design: str, power: float) -> SampleSize:
        """The :class:`SampleSize` of ``design`` at target ``power``."""
        return next(s for s in self.sizes if s.design == design and math.isclose(s.target_power, power))


# ---------------------------------------------------------------------------------------------
# Analytic sample sizes
# ---------------------------------------------------------------------------------------------


#: patients per arm up to which a test's power is computed exactly, over every pair of the arms' binomial
#: counts; above, the normal approximation (within a point there) — at a few dozen per arm it is several
#: points off the test's real power
EXACT_MAX_PER_ARM = 1000
#: the same for the fixed-sequence joint power (its exact sum costs ~ subset × all² per evaluation)
EXACT_JOINT_MAX_PER_ARM = 300


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    return binom.pmf(np.arange(n + 1), n, p)


def _rejection_table(n: int, alpha: float) -> np.ndarray:
    """Whether the pooled z-test rejects, for every (arm count, comparator count) with ``n`` per arm."""
    counts = np.arange(n + 1)
    return _rejects(counts[:, None], n, counts[None, :], n, alpha)


def _power_at(p_arm: float, p_comparator: float, n_per_arm: float, alpha: float) -> float:
    if n_per_arm < 1:
        return 0.0
    if n_per_arm > EXACT_MAX_PER_ARM:
        return float(power_proportions_2indep(p_arm - p_comparator, p_comparator, n_per_arm, ratio=1.0,
                                              alpha=alpha, alternative="two-sided", return_results=False))
    n = int(n_per_arm)
    return float(_binomial_pmf(n, p_arm) @ _rejection_table(n, alpha) @ _binomial_pmf(n, p_comparator))


def proportion_power(p_arm: float, p_comparator: float, n_per_arm: float | np.ndarray, alpha: float):
    """Power of the two-sided pooled two-proportion z-test — the test a trial's analysis and
    :func:`simulate_power` use — with ``n_per_arm`` patients per arm (whole patients): exact up to
    :data:`EXACT_MAX_PER_ARM`, then statsmodels' normal approximation (``power_proportions_2indep``)."""
    n = np.asarray(n_per_arm, dtype=float)
    power = np.array([_power_at(p_arm, p_comparator, value, alpha) for value in n.ravel()]).reshape(n.shape)
    return power if np.ndim(n) else float(power)


def _smallest_whole(power_at, target: float, start: int) -> int:
    """The smallest whole n from ``start`` down at which ``power_at`` still reaches ``target`` (or up
    from ``start`` to the first that does): exact power saw-tooths a little in n."""
    n = max(2, start)
    if power_at(n) >= target:
        while n > 2 and power_at(n - 1) >= target:
            n -= 1
        return n
    while power_at(n) < target:
        n += 1
    return n


def _smallest_n(power_at, target: float, low: float, cap: float) -> float:
    """The smallest (continuous) n ≥ ``low`` at which ``power_at(n)`` reaches ``target``; inf when not by ``cap``."""
    if power_at(cap) < target:
        return math.inf
    if power_at(low) >= target:
        return low
    return float(brentq(lambda n: power_at(n) - target, low, cap, xtol=1e-3))


def _per_arm(p_arm: float, p_comparator: float, alpha: float, power: float, cap: float = 1e7) -> float:
    """Patients per arm for two proportions (1:1, two-sided, :func:`proportion_power`: whole patients
    where the power is exact); inf when the rates are equal or more than ``cap`` are needed."""
    if math.isclose(p_arm, p_comparator, abs_tol=1e-9):
        return math.inf
    approximate = _smallest_n(lambda n: power_proportions_2indep(
        p_arm - p_comparator, p_comparator, n, ratio=1.0, alpha=alpha, return_results=False), power, 2.0, cap)
    if not math.isfinite(approximate) or approximate > EXACT_MAX_PER_ARM:
        return approximate
    return float(_smallest_whole(lambda n: proportion_power(p_arm, p_comparator, n, alpha), power,
                                 math.ceil(approximate)))


def _difference_moments(p_arm: float, p_comparator: float, n_per_arm: float) -> tuple[float, float, float]:
    """(mean, sd under the alternative, sd under the null with the rates pooled) of the observed
    difference in rates with ``n_per_arm`` patients per arm."""
    pooled = (p_arm + p_comparator) / 2
    return (p_arm - p_comparator, math.sqrt((p_arm * (1 - p_arm) + p_comparator * (1 - p_comparator)) / n_per_arm),
            math.sqrt(2 * pooled * (1 - pooled) / n_per_arm))


def gated_subset_power(rates: ArmRates, n_per_arm: float, alphas: tuple[float, float]) -> float:
    """Analytic power of the subset hypothesis of an all-comers trial under fixed-sequence testing: the
    probability that the overall two-sided test and then the subset's both reject, with ``n_per_arm``
    patients per arm randomised within strata. The two differences in rates are jointly normal: the
    overall one is the prevalence-weighted mix of the subset's and the rest's, so their covariance is
    the prevalence × the subset difference's variance."""
    w = rates.prevalence
    if n_per_arm <= EXACT_JOINT_MAX_PER_ARM:
        return _exact_gated_power(rates, int(n_per_arm), alphas)
    inside = _difference_moments(rates.p_arm, rates.p_comparator, n_per_arm * w)
    overall = _difference_moments(*rates.overall(), n_per_arm)
    sd_outside = _difference_moments(rates.p_arm_outside, rates.p_comparator_outside,
                                     n_per_arm * (1 - w))[1] if w < 1 else 0.0
    sd_all = math.sqrt((w * inside[1]) ** 2 + ((1 - w) * sd_outside) ** 2)
    rho = min(1.0, w * inside[1] / sd_all)
    joint = multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]], allow_singular=True)
    # each test accepts while |difference| ≤ z · (its sd under the null): the bounds, standardised
    bounds = [[(sign * norm.ppf(1 - alpha / 2) * moments[2] - moments[0]) / sd for sign in (-1, 1)]
              for alpha, moments, sd in ((alphas[0], overall, sd_all), (alphas[1], inside, inside[1]))]
    (lo_all, hi_all), (lo_sub, hi_sub) = bounds
    both_accept = (joint.cdf([hi_all, hi_sub]) - joint.cdf([lo_all, hi_sub]) - joint.cdf([hi_all, lo_sub])
                   + joint.cdf([lo_all, lo_sub]))
    accept_all = norm.cdf(hi_all) - norm.cdf(lo_all)
    accept_sub = norm.cdf(hi_sub) - norm.cdf(lo_sub)
    return float(min(1.0, max(0.0, 1 - accept_all - accept_sub + both_accept)))


def _exact_gated_power(rates: ArmRates, n_per_arm: int, alphas: tuple[float, float]) -> float:
    """:func:`gated_subset_power` summed exactly over the four binomial counts (subset and rest, arm and
    comparator; round(n × prevalence) subset patients per arm): the overall test's rejection, averaged
    over the rest's counts, is a banded matrix product."""
    inside = min(n_per_arm, max(0, round(n_per_arm * rates.prevalence)))
    rest = n_per_arm - inside
    subset_rejects = _rejection_table(inside, alphas[1]) if inside else np.zeros((1, 1), dtype=bool)
    overall_rejects = _rejection_table(n_per_arm, alphas[0]).astype(float)

    def shifted(p: float) -> np.ndarray:  # [subset count, overall count] → P(rest count = overall − subset)
        pmf, out = _binomial_pmf(rest, p), np.zeros((inside + 1, n_per_arm + 1))
        for k in range(inside + 1):
            out[k, k:k + rest + 1] = pmf
        return out

    given_subset = shifted(rates.p_arm_outside) @ overall_rejects @ shifted(rates.p_comparator_outside).T
    weights = np.outer(_binomial_pmf(inside, rates.p_arm), _binomial_pmf(inside, rates.p_comparator))
    return float(np.sum(weights * subset_rejects * given_subset))


def _subset_power(spec: DesignSpec, rates: ArmRates, n_per_arm: float) -> float:
    """Analytic power of an all-comers trial's subset hypothesis (gated under fixed sequence)."""
    alphas = spec.alphas()
    if spec.alpha_split == "fixed_sequence":
        return gated_subset_power(rates, n_per_arm, alphas)
    return float(proportion_power(rates.p_arm, rates.p_comparator, n_per_arm * rates.prevalence, alphas[1]))


def schoenfeld_events(hazard_ratio: float, alpha: float, power: float) -> float:
    """Events for a two-sided log-rank test at 1:1 (Schoenfeld 1983); inf when the hazard ratio is 1."""
    if math.isclose(hazard_ratio, 1.0):
        return math.inf
    return (norm.ppf(1 - alpha / 2) + norm.ppf(power)) ** 2 / (0.25 * math.log(hazard_ratio) ** 2)


def logrank_power(hazard_ratio: float, events: float | np.ndarray, alpha: float):
    """Analytic power of the two-sided log-rank test with ``events`` events at 1:1 (Schoenfeld)."""
    z = np.sqrt(0.25 * np.asarray(events, dtype=float)) * abs(math.log(hazard_ratio))
    return norm.cdf(z - norm.ppf(1 - alpha / 2)) + norm.cdf(-z - norm.ppf(1 - alpha / 2))


def event_probability(median_months: float, hazard_ratio: float, accrual: float, follow_up: float) -> float:
    """The probability that a patient's PFS event is seen: exponential PFS (comparator median
    ``median_months``, the arm's hazard × ``hazard_ratio``), uniform accrual over ``accrual`` months, then
    ``follow_up`` months; averaged over the two arms (1:1)."""
    out = []
    for rate in (math.log(2) / median_months, math.log(2) / median_months * hazard_ratio):
        out.append(1 - (math.exp(-rate * follow_up) - math.exp(-rate * (accrual + follow_up))) / (rate * accrual))
    return float(np.mean(out))


def _whole(value: float, cap: int) -> int | None:
    return None if not math.isfinite(value) or value > cap else int(math.ceil(value - 1e-9))


def _response_sizes(spec: DesignSpec, rates: ArmRates, power: float) -> list[SampleSize]:
    """The enrichment and all-comers sizes of a response endpoint at target ``power``."""
    cap, prevalence = spec.max_patients, rates.prevalence
    per_arm = _whole(_per_arm(rates.p_arm, rates.p_comparator, spec.alpha, power), cap // 2)
    if per_arm is None:
        enrich = SampleSize("enrichment", power, None, None, None, None, None, spec.alpha, None, None,
                            _unreachable(rates.p_arm, rates.p_comparator, "in the subset", cap))
    else:
        enrich = SampleSize("enrichment", power, 2 * per_arm, 2 * per_arm, _whole(2 * per_arm / prevalence, 10 * cap),
                            None, None, spec.alpha, None,
                            float(proportion_power(rates.p_arm, rates.p_comparator, per_arm, spec.alpha)))
    return [enrich, _all_comers_response(spec, rates, power)]


def _unreachable(p_arm: float, p_comparator: float, where: str, cap: int) -> str:
    if math.isclose(p_arm, p_comparator, abs_tol=1e-9):
        return f"not reachable: the arm and the comparator have the same expected rate {where} ({p_arm:.3f})"
    return f"not reachable: more than {cap:,} patients (rates {p_arm:.3f} vs {p_comparator:.3f} {where})"


def _all_comers_response(spec: DesignSpec, rates: ArmRates, power: float) -> SampleSize:
    alpha_overall, alpha_subset = spec.alphas()
    if not rates.has_outside:
        return SampleSize("all_comers", power, None, None, None, None, alpha_overall, alpha_subset, None, None,
                          "not designed: the rates outside the subset are unknown (no patient of known status "
                          "is outside it)")
    p_arm, p_comparator = rates.overall()
    cap = spec.max_patients
    overall = _per_arm(p_arm, p_comparator, alpha_overall, power)
    if _whole(overall, cap // 2) is None:
        return SampleSize("all_comers", power, None, None, None, None, alpha_overall, alpha_subset, None, None,
                          _unreachable(p_arm, p_comparator, "among all patients", cap))
    subset = math.inf if math.isclose(rates.p_arm, rates.p_comparator, abs_tol=1e-9) else _smallest_n(
        lambda n: _subset_power(spec, rates, n), power, 2.0, cap / 2)
    per_arm = _whole(max(overall, subset), cap // 2)
    note = "sized by the overall hypothesis" if overall >= subset else "sized by the subset hypothesis"
    if per_arm is None:  # the subset's own test is out of reach: size for the overall one and say so
        per_arm = _whole(overall, cap // 2)
        note = "sized by the overall hypothesis; the subset's " + _unreachable(
            rates.p_arm, rates.p_comparator, "in the subset", cap).removeprefix("not reachable: ")
    n_total = 2 * per_arm
    return SampleSize("all_comers", power, n_total, int(round(n_total * rates.prevalence)), n_total, None,
                      alpha_overall, alpha_subset, float(proportion_power(p_arm, p_comparator, per_arm, alpha_overall)),
                      _subset_power(spec, rates, per_arm), note)


def _pfs_sizes(spec: DesignSpec, rates: ArmRates, power: float) -> list[SampleSize]:
    """The enrichment and all-comers sizes of the PFS endpoint (events, then patients) at ``power``."""
    if spec.control_median_months is None or not spec.control_median_months > 0:
        raise DesignError("endpoint pfs needs the comparator's median PFS in the subset (--control-median-months), "
                          "or a cohort that labels PFS of comparator patients in the subset")
    cap, prevalence, hr = spec.max_patients, rates.prevalence, spec.hazard_ratio
    inside = event_probability(spec.control_median_months, hr, spec.accrual_months, spec.follow_up_months)
    events = schoenfeld_events(hr, spec.alpha, power)
    n = _whole(events / inside / 2, cap // 2)
    enrich = SampleSize("enrichment", power, None if n is None else 2 * n, None if n is None else 2 * n,
                        None if n is None else _whole(2 * n / prevalence, 10 * cap), _whole(events, cap), None,
                        spec.alpha, None, float(logrank_power(hr, math.ceil(events), spec.alpha)),
                        "" if n else f"not reachable: more than {cap:,} patients")
    alpha_overall, alpha_subset = spec.alphas()
    # the overall hazard ratio of a mixed population: the prevalence-weighted log hazard ratios (an approximation)
    hr_all = math.exp(prevalence * math.log(hr) + (1 - prevalence) * math.log(spec.hazard_ratio_outside))
    outside = event_probability(spec.control_median_months, spec.hazard_ratio_outside, spec.accrual_months,
                                spec.follow_up_months)
    seen = prevalence * inside + (1 - prevalence) * outside
    overall_events = schoenfeld_events(hr_all, alpha_overall, power)
    subset_events = schoenfeld_events(hr, alpha_subset, power)
    per_arm = _whole(max(overall_events / seen, subset_events / inside / prevalence) / 2, cap // 2)
    if per_arm is None:
        return [enrich, SampleSize("all_comers", power, None, None, None, None, alpha_overall, alpha_subset, None,
                                   None, f"not reachable: more than {cap:,} patients (overall HR {hr_all:.2f})")]
    n_total = 2 * per_arm
    note = (f"overall hazard ratio {hr_all:.2f} (prevalence-weighted log hazard ratios, hazard ratio outside "
            f"{spec.hazard_ratio_outside:g}: an approximation)")
    return [enrich, SampleSize("all_comers", power, n_total, int(round(n_total * prevalence)), n_total,
                               _whole(n_total * seen, 10 * cap), alpha_overall, alpha_subset,
                               float(logrank_power(hr_all, n_total * seen, alpha_overall)),
                               float(logrank_power(hr, n_total * prevalence * inside, alpha_subset)), note)]


def design_trial(spec: DesignSpec, rates: ArmRates) -> TrialDesign:
    """Return the enrichment and all-comers designs of ``spec`` at each target power, from ``rates``
    (for PFS only their prevalence is used: the effect is the spec's hazard ratio)."""
    spec = spec.checked()
    sizes = [size for power in spec.powers for size in
             (_pfs_sizes if spec.endpoint == "pfs" else _response_sizes)(spec, rates, power)]
    design = TrialDesign(spec, rates, sizes)
    design.warnings += [f"{s.design} at {s.target_power:.0%} power: {s.note}" for s in sizes
                        if s.n_total is None and s.note]
    return design


def power_curve(design: TrialDesign, n_total: np.ndarray) -> pd.DataFrame:
    """Analytic power against the number of patients randomised: columns n_total, enrichment (the subset
    enrolled alone), all_comers_overall, all_comers_subset (NaN-free: a design not made is left out)."""
    spec, rates = design.spec, design.rates
    n = np.asarray(n_total, dtype=float)
    alpha_overall, alpha_subset = spec.alphas()
    out = {"n_total": n.astype(int)}
    if spec.endpoint == "pfs":
        inside = event_probability(spec.control_median_months, spec.hazard_ratio, spec.accrual_months,
                                   spec.follow_up_months)
        out["enrichment"] = logrank_power(spec.hazard_ratio, n * inside, spec.alpha)
        return pd.DataFrame(out)
    out["enrichment"] = proportion_power(rates.p_arm, rates.p_comparator, n / 2, spec.alpha)
    if rates.has_outside:
        out["all_comers_overall"] = proportion_power(*rates.overall(), n / 2, alpha_overall)
        out["all_comers_subset"] = [_subset_power(spec, rates, half) if half > 0 else 0.0 for half in n / 2]
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Monte-Carlo check
# ---------------------------------------------------------------------------------------------

#: random numbers held at once per batch of simulated trials (memory stays bounded whatever the size)
_BATCH_CELLS = 1_000_000


def _rejects(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray, alpha: float) -> np.ndarray:
    """Whether the two-sided pooled two-proportion z-test rejects at ``alpha``, per trial (no patients or
    no variation in an arm or overall: does not reject)."""
    n1, n2 = np.asarray(n1, dtype=float), np.asarray(n2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (x1 + x2) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = (x1 / n1 - x2 / n2) / se
    return np.nan_to_num(np.abs(z), nan=0.0, posinf=0.0) > norm.ppf(1 - alpha / 2)


def _enrichment_trials(pool: TruthPool, n_total: int, n_trials: int, alpha: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Rejections of ``n_trials`` enrichment trials of ``n_total`` subset patients (first half: arm)."""
    members = np.flatnonzero(pool.member)
    half = n_total // 2
    out = []
    for start in range(0, n_trials, max(1, _BATCH_CELLS // n_total)):
        k = min(n_trials - start, max(1, _BATCH_CELLS // n_total))
        who = members[rng.integers(0, len(members), size=(k, 2 * half))]
        p = np.concatenate([pool.p_arm[who[:, :half]], pool.p_comparator[who[:, half:]]], axis=1)
        response = rng.random(p.shape) < p
        out.append(_rejects(response[:, :half].sum(1), half, response[:, half:].sum(1), half, alpha))
    return np.concatenate(out)


def _all_comers_trials(pool: TruthPool, n_total: int, n_trials: int, alphas: tuple[float, float],
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(overall rejections, subset rejections) of ``n_trials`` all-comers trials: patients drawn from the
    pool, randomisation stratified by subset status (alternating within each stratum)."""
    overall, subset = [], []
    step = max(1, _BATCH_CELLS // n_total)
    on_arm = (np.arange(n_total) % 2 == 0)[None, :]
    for start in range(0, n_trials, step):
        k = min(n_trials - start, step)
        who = rng.integers(0, len(pool.member), size=(k, n_total))
        who = np.take_along_axis(who, np.argsort(~pool.member[who], axis=1, kind="stable"), axis=1)
        member = pool.member[who]
        response = rng.random(who.shape) < np.where(on_arm, pool.p_arm[who], pool.p_comparator[who])
        arm, comparator = on_arm & np.ones_like(member), ~on_arm & np.ones_like(member)
        overall.append(_rejects((response & arm).sum(1), arm.sum(1), (response & comparator).sum(1),
                                comparator.sum(1), alphas[0]))
        arm, comparator = arm & member, comparator & member
        subset.append(_rejects((response & arm).sum(1), arm.sum(1), (response & comparator).sum(1),
                               comparator.sum(1), alphas[1]))
    return np.concatenate(overall), np.concatenate(subset)


def simulate_power(design: TrialDesign, pool: TruthPool, n_trials: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Return the empirical power of each designed trial beside its analytic power: one row per design ×
    target power × hypothesis (design, target_power, hypothesis, n_total, alpha, analytic_power,
    empirical_power, mc_se, n_trials). ``pool``: patients with their true probabilities under both arms
    (:func:`response_model.trials.rates.truth_pool`). Under fixed-sequence testing the subset row's
    empirical power is that of rejecting both (the subset is tested only after the overall test)."""
    spec = design.spec
    if spec.endpoint not in RESPONSE_ENDPOINTS:
        raise DesignError(f"the Monte-Carlo check covers {', '.join(RESPONSE_ENDPOINTS)}: the simulator's truth holds "
                          "response probabilities per regimen, not hazards")
    if n_trials < 1:
        raise DesignError(f"n_trials: {n_trials}; expected at least 1")
    if not pool.member.any():
        raise DesignError(f"subset {spec.subset!r} has no member in the pool; nothing to simulate")
    rng = np.random.default_rng(seed)
    rows = []
    for size in design.sizes:
        if size.n_total is None:
            continue
        if size.design == "enrichment":
            found = {"subset": _enrichment_trials(pool, size.n_total, n_trials, spec.alpha, rng)}
            analytic = {"subset": (spec.alpha, size.power_subset)}
        else:
            overall, subset = _all_comers_trials(pool, size.n_total, n_trials, spec.alphas(), rng)
            found = {"overall": overall, "subset": overall & subset if spec.alpha_split == "fixed_sequence" else subset}
            analytic = {"overall": (size.alpha_overall, size.power_overall), "subset": (size.alpha_subset,
                                                                                      size.power_subset)}
        for hypothesis, rejected in found.items():
            empirical = float(rejected.mean())
            rows.append({"design": size.design, "target_power": size.target_power, "hypothesis": hypothesis,
                         "n_total": size.n_total, "alpha": analytic[hypothesis][0],
                         "analytic_power": analytic[hypothesis][1], "empirical_power": empirical,
                         "mc_se": math.sqrt(max(empirical * (1 - empirical), 1e-12) / n_trials), "n_trials": n_trials})
    return pd.DataFrame(rows)


def with_control_median(spec: DesignSpec, median_months: float | None) -> DesignSpec:
    """``spec`` with the comparator's median PFS set when it has none (e.g. from the cohort)."""
    return spec if spec.control_median_months is not None or median_months is None else \
        replace(spec, control_median_months=float(median_months))
