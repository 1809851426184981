"""API keys of the HTTP layer: the roles of each resource, the bearer token and :func:`authenticate`."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import HTTPException, Request

from response_model.service.keys import KeyInfo, KeyStore

CLINICAL_ROLES = ("clinician", "admin")
MODEL_ROLES = ("clinician", "auditor", "admin")
AUDIT_ROLES = ("auditor", "admin")
ADMIN_ROLES = ("admin",)
OUTCOME_ROLES = ("registrar", "admin")  # who records outcomes (POST /v1/outcomes, outcomes import)


class AuthError(HTTPException):
    """401 (no or bad key) or 403 (wrong role; ``key`` is the caller's)."""

    def __init__(self, status: int, message: str, key: KeyInfo | None = None) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, headers=headers)
        self.key = key


def bearer_token(request: Request) -> str | None:
    """Return the token of the request's ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(keys: KeyStore, token: str | None, roles: Sequence[str]) -> KeyInfo:
    """Return the active key of ``token`` if its role is one of ``roles``; raises AuthError 401 / 403 otherwise."""
    key = keys.authenticate(token)
    if key is None:
        raise AuthError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'")
    if key.role not in roles:
        raise AuthError(403, f"role {key.role!r} may not use this endpoint; needs one of {', '.join(roles)}", key)
    return key
