"""The service's FastAPI dependencies, typed: its state, settings, model, key store, audit trail and callers' keys.

Use them as annotations, e.g. ``def route(model: CurrentModel, key: ClinicianKey)``. The state is the
one :class:`~response_model.service.state.ServiceState` that ``create_app`` stores as
``app.state.service``; nothing else is looked up on ``app.state``.

The cheap dependencies are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, and
these do no blocking work worth a thread hand-off per request (a key check is one indexed read of the
key's row and, for a key seen before, a SHA-256).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from response_model.service.audit import AuditTrail
from response_model.service.auth import (
    ADMIN_ROLES,
    AUDIT_ROLES,
    CLINICAL_ROLES,
    MODEL_ROLES,
    authenticate,
    bearer_token,
)
from response_model.service.holder import LoadedModel, ModelHolder
from response_model.service.keys import KeyInfo, KeyStore
from response_model.service.recording import record_access
from response_model.service.state import ServiceState, Settings


def state_of(request: Request) -> ServiceState:
    """Return the service state of the app serving ``request`` (for handlers outside dependency injection)."""
    return request.app.state.service


def caller_key(request: Request, roles: Sequence[str], token: str | None = None) -> KeyInfo:
    """Return the key of ``token`` (default: the request's bearer token) if its role is one of ``roles``;
    raises AuthError 401 / 403 otherwise."""
    return authenticate(state_of(request).keys, token if token is not None else bearer_token(request), roles)


async def service_state(request: Request) -> ServiceState:
    """Return the service state."""
    return state_of(request)


ServiceDep = Annotated[ServiceState, Depends(service_state)]


async def settings(state: ServiceDep) -> Settings:
    """Return the settings the service runs with."""
    return state.settings


async def key_store(state: ServiceDep) -> KeyStore:
    """Return the key store."""
    return state.keys


async def audit_trail(state: ServiceDep) -> AuditTrail:
    """Return the audit trail."""
    return state.trail


async def model_holder(state: ServiceDep) -> ModelHolder:
    """Return the model holder (for the probes and reloads; routes that score use :data:`CurrentModel`)."""
    return state.holder


async def current_model(state: ServiceDep) -> LoadedModel:
    """Return the model in service now (a request keeps it even if a reload swaps another in); 503 before one loads."""
    return state.holder.require()


SettingsDep = Annotated[Settings, Depends(settings)]
KeyStoreDep = Annotated[KeyStore, Depends(key_store)]
TrailDep = Annotated[AuditTrail, Depends(audit_trail)]
HolderDep = Annotated[ModelHolder, Depends(model_holder)]
CurrentModel = Annotated[LoadedModel, Depends(current_model)]


class RoleKey:
    """Dependency: the caller's key (bearer token) if its role is one of ``roles``; AuthError 401 / 403 otherwise."""

    def __init__(self, *roles: str) -> None:
        self.roles = roles

    async def __call__(self, request: Request, keys: KeyStoreDep) -> KeyInfo:
        """Return the caller's key; raises AuthError 401 / 403."""
        return authenticate(keys, bearer_token(request), self.roles)


def auditor_key(request: Request, keys: KeyStoreDep, trail: TrailDep) -> KeyInfo:
    """Return the caller's key if its role is auditor or admin; a refusal (401 / 403) is first recorded in the
    trail as a refused read (``METHOD /route``), since every attempt to read the trail is. A plain ``def``:
    recording is a write."""
    try:
        return authenticate(keys, bearer_token(request), AUDIT_ROLES)
    except HTTPException as exc:
        endpoint = f"{request.method} {request.scope['route'].path}"
        record_access(trail, getattr(exc, "key", None), endpoint, exc.status_code,
                      {"access": "refused", "error": exc.detail})
        raise


ClinicianKey = Annotated[KeyInfo, Depends(RoleKey(*CLINICAL_ROLES))]
ModelReaderKey = Annotated[KeyInfo, Depends(RoleKey(*MODEL_ROLES))]
AdminKey = Annotated[KeyInfo, Depends(RoleKey(*ADMIN_ROLES))]
AuditorKey = Annotated[KeyInfo, Depends(auditor_key)]
ReportKey = Annotated[KeyInfo, Depends(RoleKey(*AUDIT_ROLES))]  # reading the report is not an access record
