"""Open a rendered report in headless Chromium and check what a reader would see.

A report is only useful if it renders: every figure must load from the files beside it,
no script may fail, and nothing may be fetched from the network (reports are shared as
folders and must be self-contained). :func:`check_page` drives the system's Chromium
(Debian's ``chromium`` package; ``.ci/run`` installs it) through Playwright and returns
what it saw.

Playwright is imported only when :func:`check_page` runs, so ``import robustkit`` never
needs it, and Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from robustkit.errors import RobustkitError

#: Command-line names tried, in order, after ``$ROBUSTKIT_CHROMIUM``.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# Headless, no sandbox (containers and root have none), no GPU, no background traffic that
# could be mistaken for the page's. --disable-dev-shm-usage because containers often mount
# a tiny /dev/shm, where Chromium crashes instead of reporting anything.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-dev-shm-usage")

# URL schemes a self-contained page may load; every other request is aborted and reported.
_LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

_INSTALL_CHROMIUM = ("install Debian's chromium (`apt-get install -y --no-install-recommends "
                     "chromium`, which .ci/run does) or set ROBUSTKIT_CHROMIUM to a Chromium "
                     "or Chrome executable")
_INSTALL_PLAYWRIGHT = ("install the test extra (`pip install -e '.[test]'`) or "
                       "`pip install playwright`; no `playwright install` is needed, the "
                       "system Chromium is used")

# Runs in the page: makes lazy images load, waits (bounded) for every image to finish
# loading or fail, then reads what the browser decoded.
_IMAGES_JS = """async (timeoutMs) => {
  const images = Array.from(document.images);
  for (const img of images) if (img.loading === "lazy") img.loading = "eager";
  const settled = images.map(img => img.complete ? null : new Promise(resolve => {
    img.addEventListener("load", resolve, {once: true});
    img.addEventListener("error", resolve, {once: true});
  }));
  await Promise.race([Promise.all(settled),
                      new Promise(resolve => setTimeout(resolve, timeoutMs))]);
  return images.map(img => ({
    src: img.getAttribute("src") ?? "",
    url: img.currentSrc || img.src,
    complete: img.complete,
    natural_width: img.naturalWidth,
    natural_height: img.naturalHeight,
  }));
}"""


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw when it opened a page.

    Attributes:
        url: the ``file://`` URL that was opened.
        images: one dict per ``<img>`` in document order, with ``src`` (as written in the
            HTML), ``url`` (resolved), ``complete``, ``natural_width`` and
            ``natural_height`` (0 when the image did not load or decode).
        broken_images: the ``src`` of every image that did not load (``natural_width``
            is 0 or it never completed).
        console_errors: console messages of type error, uncaught exceptions, failed
            requests and blocked network requests, one line each.
        screenshot: where the screenshot was written, or None.
    """

    url: str
    images: list[dict]
    broken_images: list[str]
    console_errors: list[str]
    screenshot: Path | None

    @property
    def ok(self) -> bool:
        """True when every image loaded and nothing went wrong in the console."""
        return not self.broken_images and not self.console_errors

    @property
    def problems(self) -> list[str]:
        """Every problem found, one line each (empty when :attr:`ok`); for assertion messages."""
        return [f"image did not load: {src}" for src in self.broken_images] + self.console_errors


def find_chromium() -> str | None:
    """Find a Chromium (or Chrome) executable to drive.

    ``$ROBUSTKIT_CHROMIUM`` wins when set (a path or a command name); otherwise the first of
    ``chromium``, ``chromium-browser`` and ``google-chrome`` found on ``PATH``.

    Returns:
        The executable's path, or None when none is installed.

    Raises:
        RobustkitError: ``$ROBUSTKIT_CHROMIUM`` is set but names no executable (a typo
            there should not silently turn the browser check into a skip).

    Example:
        >>> find_chromium()  # doctest: +SKIP
        '/usr/bin/chromium'
    """
    chosen = os.environ.get("ROBUSTKIT_CHROMIUM")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise RobustkitError(f"ROBUSTKIT_CHROMIUM={chosen!r} is not an executable file "
                                 "or a command on PATH")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def check_page(html: str | os.PathLike, *, screenshot: str | os.PathLike | None = None,
               timeout_s: float = 30, width: int = 1280, height: int = 800) -> PageCheck:
    """Open an HTML file in headless Chromium; report images that failed and console errors.

    Chromium (found by :func:`find_chromium`) starts with a fresh temporary profile and the
    flags in :data:`CHROMIUM_FLAGS`, opens the file as a ``file://`` URL and waits for the
    load event. Every request that is not local (``file:``, ``data:``, ``blob:``) is
    aborted and reported, since a report must be self-contained. Lazy images are made
    eager, every ``<img>`` is awaited (up to ``timeout_s``), and its ``complete`` and
    ``naturalWidth`` are read. CSS background images are not checked.

    Args:
        html: path to the HTML file (for a report, ``reports/NAME/index.html``).
        screenshot: where to write a full-page PNG screenshot (folders are made); none
            when None.
        timeout_s: the limit, in seconds, for loading the page and again for its images;
            a page that does not load in time is reported as an error, not raised.
        width: viewport width in CSS pixels (a laptop screen by default).
        height: viewport height in CSS pixels.

    Returns:
        A :class:`PageCheck`; ``check.ok`` is True when every image loaded and the console
        stayed clean, and ``check.problems`` lists what went wrong.

    Raises:
        RobustkitError: the file does not exist, an argument is out of range, Playwright
            or Chromium is missing, or Chromium fails to start; the message says what to
            install.

    Example:
        >>> check = check_page("reports/quickstart/index.html",
        ...                    screenshot="reports/quickstart/screenshot.png")  # doctest: +SKIP
        >>> assert check.ok, check.problems  # doctest: +SKIP
    """
    path = Path(html).expanduser().resolve()
    if not path.is_file():
        raise RobustkitError(f"check_page: no HTML file at {path}")
    if not timeout_s > 0:
        raise RobustkitError(f"check_page: timeout_s must be positive, got {timeout_s}")
    if width < 1 or height < 1:
        raise RobustkitError(f"check_page: width and height must be positive, got "
                             f"{width}x{height}")
    shot = Path(screenshot).expanduser().resolve() if screenshot is not None else None
    executable = find_chromium()
    if executable is None:
        raise RobustkitError(f"check_page needs Chromium, and none was found: {_INSTALL_CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401  (imported here, so only check_page needs it)
    except ImportError as exc:
        raise RobustkitError(f"check_page needs the playwright package ({exc}): "
                             f"{_INSTALL_PLAYWRIGHT}") from None

    args = (path, shot, executable, timeout_s, width, height)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _check(*args)
    # Playwright's sync API refuses to run inside an event loop (Jupyter, async code), so
    # run it on a thread of its own there.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_check, *args).result()


def _check(path: Path, shot: Path | None, executable: str, timeout_s: float, width: int,
           height: int) -> PageCheck:
    """Drive Chromium over one page; the body of :func:`check_page` after its checks."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url = path.as_uri()
    timeout_ms = 1000 * timeout_s
    console: list[tuple[str, str]] = []      # (message, URL of the resource it is about)
    page_errors: list[str] = []
    blocked: list[str] = []
    failed: list[tuple[str, str]] = []       # (URL, Chromium's reason)

    def route(r) -> None:
        request_url = r.request.url
        if request_url.startswith(_LOCAL_SCHEMES):
            r.continue_()
        else:
            blocked.append(request_url)
            r.abort("blockedbyclient")

    def on_console(message) -> None:
        if message.type == "error":
            console.append((message.text, message.location.get("url", "")))

    def on_page_error(error) -> None:
        page_errors.append(f"uncaught exception: {error.name or 'Error'}: {error.message}")

    def on_request_failed(request) -> None:
        if request.url not in blocked:
            failed.append((request.url, request.failure or "failed"))

    with tempfile.TemporaryDirectory(prefix="robustkit-chromium-",
                                     ignore_cleanup_errors=True) as profile, \
            sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS),
                viewport={"width": width, "height": height}, timeout=timeout_ms)
        except PlaywrightError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RobustkitError(f"Chromium at {executable} did not start ({first}); "
                                 f"{_INSTALL_CHROMIUM}") from None
        try:
            context.set_default_timeout(timeout_ms)
            context.route("**/*", route)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("requestfailed", on_request_failed)
            try:
                page.goto(url, wait_until="load")
            except PlaywrightTimeout:
                page_errors.append(f"page did not finish loading within {timeout_s:g} s")
            images = page.evaluate(_IMAGES_JS, timeout_ms)
            if shot is not None:
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True, type="png")
        finally:
            context.close()

    # Chromium echoes every failed resource as a console error ("Failed to load resource");
    # those are already reported as blocked or failed requests, with the reason.
    reported = set(blocked) | {u for u, _ in failed}
    errors = [f"console.error: {text}" + (f" ({where})" if where else "")
              for text, where in console
              if not (where in reported and text.startswith("Failed to load resource"))]
    errors += page_errors
    errors += [f"network request blocked (reports must be self-contained): {u}" for u in blocked]
    errors += [f"failed request: {u} ({reason})" for u, reason in failed]
    broken = [img["src"] for img in images if not img["complete"] or img["natural_width"] == 0]
    return PageCheck(url=url, images=images, broken_images=broken, console_errors=errors,
                     screenshot=shot)
