"""The prediction service: the app (:mod:`.app`), its dependencies (:mod:`.deps`) and routers (:mod:`.routers`),
API keys (:mod:`.keys`), the audit trail (:mod:`.audit`) and their CLI commands (:mod:`.commands`)."""
