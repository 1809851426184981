"""Security headers on every answer of the service: a pure ASGI middleware, outside all others.

Every answer — JSON, HTML, files, the guard's 413/422, the exception handlers' 401/403/422 and a 500
from Starlette's error middleware — gets the headers of :data:`DEFAULT_HEADERS` that it does not set
itself: ``Cache-Control: no-store`` (predictions and audit records are patient data, not for a
browser's or a proxy's cache), ``X-Content-Type-Options: nosniff`` (a JSON answer is never read as
HTML or script), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``, and a
``Content-Security-Policy`` that allows nothing — right for JSON, which is never a page. The HTML
pages set a policy of their own that allows what they need: the clinician page
(:mod:`~response_model.service.web`) and the report (:mod:`~response_model.service.model_report`)
their inline style sheet by hash (:func:`style_policy`), ``/docs`` its scripts.

:func:`~response_model.service.app.create_app` wraps the whole app (:class:`ServiceApp`), since a
middleware added with ``add_middleware`` sits inside Starlette's error middleware and never sees its 500.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI

#: (name, value) added to an answer that does not set the header itself
DEFAULT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
)
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


class SecurityHeaders:
    """ASGI middleware: adds each of :data:`DEFAULT_HEADERS` that an HTTP answer does not carry."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in DEFAULT_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ServiceApp(FastAPI):
    """The service's FastAPI app: its whole middleware stack wrapped in :class:`SecurityHeaders`."""

    def build_middleware_stack(self):
        """Return Starlette's stack (error middleware outermost) inside :class:`SecurityHeaders`."""
        return SecurityHeaders(super().build_middleware_stack())


def style_policy(template_source: str) -> str:
    """Return the CSP ``style-src`` sources allowing exactly the ``<style>`` blocks of ``template_source``
    (by SHA-256), e.g. ``'sha256-…'``; the blocks must hold no template syntax, so that they render verbatim."""
    blocks = _STYLE.findall(template_source)
    for block in blocks:
        if "{{" in block or "{%" in block:
            raise ValueError("a <style> block holds template syntax: its hash would not match the rendered page")
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode('utf-8')).digest()).decode()}'"
                    for b in blocks) or "'none'"
