"""Headless Chromium for UI tests: Debian's /usr/bin/chromium driven by Playwright (no browser download), a fresh
profile, and every request that is not for 127.0.0.1 (or a data: URI) aborted and recorded."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL = ("http://127.0.0.1:", "data:")


def require_chromium() -> None:
    """Skip where Chromium or Playwright is missing, except in CI (.ci/run installs both), where that fails."""
    missing = [what for what, ok in (("Debian's chromium", shutil.which(CHROMIUM)),
                                     ("playwright", _has_playwright())) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def chromium_page(profile: Path, timeout_ms: int = 30_000) -> Iterator[tuple["object", list[str]]]:
    """A page in a fresh Chromium profile, and the list of non-loopback requests it tried (all aborted)."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def loopback_only(route) -> None:
        if route.request.url.startswith(LOCAL):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            context.set_default_timeout(timeout_ms)
            context.route("**/*", loopback_only)
            yield context.new_page(), blocked
        finally:
            context.close()


def skip_community_dialog(page) -> None:
    """A fresh profile gets Dagster's one-time "Join the Dagster community" dialog: press Skip when it shows."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=10_000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: the dialog did not show, nothing to dismiss
        return
    skip.click()
    skip.wait_for(state="hidden")
