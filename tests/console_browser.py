"""Headless Chromium for the console's tests: Debian's `chromium` driven by Playwright (its
Python package only; never `playwright install`). `browser()` skips the test with a clear
message when neither is there."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@contextmanager
def browser(viewport: dict[str, int] | None = None, color_scheme: str = "light") -> Iterator[Any]:
    """A fresh Chromium profile (its own user-data-dir) in a persistent context; yields the context."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: install Debian's `chromium` package (.ci/run does) to run the console's browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the `playwright` Python package is missing: `./dev test` installs it with the test extras")
    profile = tempfile.mkdtemp(prefix="sb-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                viewport=viewport or {"width": 1280, "height": 800}, color_scheme=color_scheme,
                ignore_default_args=["--enable-automation"])
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Background:
    """A coroutine (a simulated call) run on its own event loop in a thread: the browser's sync API
    keeps the test's thread."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(coroutine,), daemon=True)
        self._thread.start()

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            self.result = asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by wait()
            self.error = exc

    def wait(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the simulated call did not finish in time")
        if self.error is not None:
            raise self.error
        return self.result


def shot(page: Any, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path))
    return path
