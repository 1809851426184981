"""``/docs`` (Swagger UI) and ``/redoc`` served without the internet: their scripts, styles and favicon come
from the service itself (:data:`ASSETS_URL`), not from a CDN — hospital networks often have no way out.

The assets are those shipped by the ``fastapi-offline`` package (current Swagger UI 5 and ReDoc 2
bundles); the pages are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``), as in FastAPI's
"Custom Docs UI Static Assets" guide. Each page gets a Content-Security-Policy that allows exactly what
it needs — same-origin scripts plus its one inline start-up script (by hash), inline styles, images
from ``data:``/``blob:``, ReDoc's search worker from ``blob:`` — which the clinician page's stricter
policy does not.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def assets() -> StaticFiles:
    """Return the static-files app of the Swagger UI and ReDoc bundles, to mount at :data:`ASSETS_URL`."""
    return StaticFiles(directory=str(files("fastapi_offline") / "static"))


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    """Return ``page`` with the Content-Security-Policy its scripts and styles need, and nothing more."""
    scripts = ["'self'"] + [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                            for s in _INLINE_SCRIPT.findall(page.body.decode())]
    page.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {' '.join(scripts)}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def _root(request: Request) -> str:
    """Return the path prefix the service is mounted under behind a proxy ("" normally)."""
    return request.scope.get("root_path", "").rstrip("/")


@router.get(DOCS_URL)
def swagger_ui(request: Request) -> HTMLResponse:
    """Return the Swagger UI page of ``/openapi.json``, its assets served by the service."""
    root = _root(request)
    return _with_policy(get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL, swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters=request.app.swagger_ui_parameters))


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_redirect() -> HTMLResponse:
    """Return Swagger UI's OAuth2 redirect page (FastAPI serves it beside its default ``/docs``)."""
    return _with_policy(get_swagger_ui_oauth2_redirect_html())


@router.get(REDOC_URL)
def redoc(request: Request) -> HTMLResponse:
    """Return the ReDoc page of ``/openapi.json``, its script served by the service (no web fonts)."""
    root = _root(request)
    return _with_policy(get_redoc_html(
        openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False))
