"""The service's routers, one per resource, in the order ``create_app`` includes them (the order of /openapi.json).

The auditors' endpoints, the report and the clinician page keep their modules beside this package
(:mod:`~response_model.service.auditor`, :mod:`~response_model.service.model_report`,
:mod:`~response_model.service.web`), the names the project's docs and tests use.
"""

from __future__ import annotations

from fastapi import APIRouter

from response_model.service import auditor, model_report, web
from response_model.service.routers import admin, docs, model, monitoring, outcomes, predictions, probes

ROUTERS: tuple[APIRouter, ...] = (probes.router, predictions.router, outcomes.router, model.router, admin.router,
                                  auditor.router, monitoring.router, model_report.router, web.router, docs.router)
