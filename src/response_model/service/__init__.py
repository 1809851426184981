"""Foundations of the prediction service: API keys (:mod:`.keys`), the audit trail (:mod:`.audit`) and their CLI commands (:mod:`.commands`)."""
