"""A real browser for the console's tests: Debian's Chromium (or ZOWY_CHROMIUM) driven headless by
Playwright; tests skip, saying why, only when no Chromium is installed or it cannot start here.
Screenshots go under the test run's tmp dir, and also into $ZOWY_SCREENSHOTS when it is set."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import support

VIEWPORT = {"width": 1280, "height": 900}
INSTALL_HINT = "install it with `apt-get install chromium` (`make test` does so when run as root), or set ZOWY_CHROMIUM"


def off_loop(fn, *args, **kwargs):
    """Run ``fn`` in a thread of its own: Playwright's sync API keeps an event loop running in the test's
    thread, where the helpers that open the store (``asyncio.run``) cannot run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def chromium_path() -> str | None:
    chosen = os.environ.get("ZOWY_CHROMIUM")
    candidates = [chosen] if chosen else []
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")]
    candidates += ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def launch(playwright):
    """A headless Chromium, or a skip naming what is missing."""
    path = chromium_path()
    if path is None:
        pytest.skip(f"the console's browser tests need Chromium, which is not installed: {INSTALL_HINT}")
    try:
        return playwright.chromium.launch(executable_path=path, headless=True, timeout=60_000)
    except Exception as exc:  # a browser that cannot start here (missing libraries, no /dev/shm...)
        pytest.skip(f"Chromium at {path} cannot start here: {str(exc).strip().splitlines()[0]}")


UNLABELLED = """() => {
  const named = (el) => (el.labels && el.labels.length) || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
  const controls = [...document.querySelectorAll("input:not([type=hidden]), select, textarea")].filter((el) => !named(el));
  const buttons = [...document.querySelectorAll("button, a[href]")].filter((el) => !(el.textContent.trim() || el.getAttribute("aria-label")));
  const clickable = [...document.querySelectorAll("[onclick], div[tabindex], span[tabindex]")];
  return [...controls, ...buttons, ...clickable].map((el) => el.outerHTML.slice(0, 120));
}"""


def accessible(page) -> None:
    """Every control has a label, every button and link a name, and nothing but them is clickable."""
    assert page.evaluate(UNLABELLED) == []
    assert page.locator("h1").count() == 1


class Shots:
    """Screenshots of pages, named by what they show; each page shot is also checked by ``accessible``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        extra = os.environ.get("ZOWY_SCREENSHOTS")
        self.extra = (support.ROOT / extra) if extra and not Path(extra).is_absolute() else (Path(extra) if extra else None)
        self.taken: list[Path] = []

    def take(self, page, name: str, full_page: bool = True) -> Path:
        accessible(page)
        page.evaluate("document.getElementById('status').classList.remove('shown')")  # no passing notice in the picture
        page.wait_for_timeout(250)  # let charts settle into their final size
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        self.taken.append(path)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)
        return path


class Problems:
    """What a page reports that should never happen: script errors, CSP refusals, failed loads."""

    def __init__(self, page, expected: tuple[str, ...] = ()) -> None:
        self.seen: list[str] = []
        self.expected = expected
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))

    def _console(self, message) -> None:
        if message.type in ("error", "warning") and not any(e in message.text for e in self.expected):
            self.seen.append(f"console {message.type}: {message.text}")

    def check(self) -> None:
        assert not self.seen, "\n".join(self.seen)
