"""Monitoring after deployment (issue 16 points 2-5): drift of what the service is asked, live
performance once outcomes arrive, the expected performance before they do, and their verdicts.

- :mod:`.profile`: the training cohort's reference profile, stored in the bundle at build time;
  the served inputs' form (the validated record without its identifier) shared with the audit trail.
- :mod:`.served`: served predictions (inputs, probabilities, model version, time) read from the trail.
- :mod:`.drift`: per-feature PSI, missingness-pattern drift, a domain classifier, probability drift.
- :mod:`.performance`: live AUC and calibration with bootstrap intervals; CBPE-style expectations.
- :mod:`.checks`: the thresholds of ``configs/monitoring.yaml`` and the verdicts (ok / watch / act).
- :mod:`.report`: the HTML report; :mod:`.commands`: ``response-model monitor``.

numpy, scipy and scikit-learn only (already dependencies): Evidently, NannyML and whylogs each pull
in a large stack (NannyML pins its own pandas/scikit-learn ranges; Evidently a web UI) for the few
statistics needed here, which are a few lines each and documented where they are computed.
"""
