"""``/docs`` (Swagger UI) and ``/redoc`` work without the internet: every script, style, image and API
description they load comes from the service itself — checked in the HTML, and in headless Chromium
with every request to another origin refused."""

from __future__ import annotations

import re
import tempfile
import urllib.parse

import pytest
from conftest import require_service
from fastapi.testclient import TestClient

from response_model.privacy import PSEUDONYM_KEY_ENV
from response_model.service.app import create_app
from response_model.service.keys import DB_URL_ENV

from service_process import served_in_thread

PSEUDONYM_KEY = "docs-test-pseudonym-key-0123456789"
DOC_PAGES = ("/docs", "/redoc")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def app(smoke_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PSEUDONYM_KEY_ENV, PSEUDONYM_KEY)
        mp.delenv(DB_URL_ENV, raising=False)
        yield create_app(str(smoke_model["export_dir"]), f"sqlite:///{folder}/docs.db", alias_check=0)


def referenced_urls(page: str) -> list[str]:
    """Every URL a docs page names: attributes, the API description and Swagger UI's OAuth2 redirect."""
    return (re.findall(r'\b(?:src|href|spec-url)="([^"]*)"', page) + re.findall(r"\burl: '([^']*)'", page)
            + re.findall(r"window\.location\.origin \+ '([^']*)'", page))


@pytest.mark.parametrize("path", DOC_PAGES)
def test_the_docs_pages_reference_only_same_origin_urls_that_answer(app, path):
    with TestClient(app) as client:
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        urls = referenced_urls(response.text)
        assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9]", response.text), "an absolute URL in the page"
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            assert not parts.scheme and not parts.netloc and url.startswith("/"), url
            assert client.get(url).status_code == 200, url
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert ("script-src 'self' 'sha256-" in policy) == ("<script>" in response.text)  # inline: by hash
        assert "unsafe-eval" not in policy and "http" not in policy


def test_the_docs_policy_is_not_the_clinician_pages(app):
    with TestClient(app) as client:
        docs, page = client.get("/docs"), client.get("/")
        assert "script-src" in docs.headers["content-security-policy"]
        assert "script-src" not in page.headers["content-security-policy"]  # the page runs no script at all


@pytest.fixture()
def live_server(app):
    """The base URL of the app run by uvicorn in a thread on a free port."""
    with served_in_thread(app) as base:
        yield base


def test_the_docs_render_in_chromium_with_no_other_origin(live_server):
    chromium = require_service("RESPONSE_MODEL_TEST_CHROMIUM", "Chromium")
    from playwright.sync_api import expect, sync_playwright

    base = live_server
    elsewhere: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=CHROMIUM_ARGS)

        def route(r):
            if r.request.url.startswith(base) or r.request.url.startswith(("blob:", "data:")):
                r.continue_()
            else:
                elsewhere.append(r.request.url)
                r.abort()

        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(base + "/docs")
            expect(page.locator(".opblock-summary-path", has_text="/v1/predictions").first).to_be_visible()
            page.goto(base + "/redoc")
            expect(page.get_by_text("/v1/predictions:batch").first).to_be_attached()
            expect(page.locator("h1").first).to_contain_text("HCC response model")
        finally:
            context.close()
    assert not elsewhere, f"requests to other origins: {elsewhere[:5]}"
    # ReDoc's sidebar shows the Redocly logo from their CDN: the policy blocks it, and nothing else is missing
    refused = [m for m in problems if ("Content Security Policy" in m or "Refused" in m)
               and "cdn.redoc.ly/redoc/logo-mini.svg" not in m]
    assert not refused, refused
