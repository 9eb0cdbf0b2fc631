"""Pages in the real browser (the ``browser`` fixture of tests/conftest.py: Debian's chromium through
Playwright): signing in through the site's own login form. Shared by the browser test modules."""

from __future__ import annotations

from typing import Any

from tests.live_server import LiveServer

VIEWPORT = {"width": 1200, "height": 900}


def log_in(
    browser,
    server: LiveServer,
    username: str = "alice",
    *,
    password: str,
    timeout_ms: int = 30_000,
    **context: Any,
):
    """A new browser context (``context``: Playwright's options, the desktop viewport by default)
    with ``username`` signed in through the login form the site sends an anonymous visitor to;
    returns its page, on the chat's start page."""
    page = browser.new_context(**{"viewport": VIEWPORT, **context}).new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(server.url + "/")
    assert "/accounts/login/" in page.url, page.url
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    return page
