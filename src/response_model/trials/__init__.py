"""Trial design from observational cohorts (issue 15): biomarker-defined subsets (:mod:`.subsets`), their
description in a cohort, effect estimates, sample sizes and the trial-design report."""
