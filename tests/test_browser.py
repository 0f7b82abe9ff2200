"""The browser check: pages opened in headless Chromium, images and console inspected.

The browser tests skip, saying what to install, only where no Chromium or no Playwright is
present; ``.ci/run`` installs Debian's chromium, and the test extra installs Playwright.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from robustkit.errors import RobustkitError
from robustkit.report.browser import check_page, find_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_png(path: Path) -> Path:
    """A real 100 x 50 PNG drawn by matplotlib."""
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    fig.savefig(path, dpi=50)
    return path


def write_page(folder: Path, body: str) -> Path:
    page = folder / "index.html"
    page.write_text(f'<!doctype html>\n<html><head><meta charset="utf-8"><title>t</title>'
                    f"</head><body>{body}</body></html>\n")
    return page


def test_a_page_with_a_real_png_passes_and_is_screenshot(chromium, tmp_path):
    write_png(tmp_path / "fig.png")
    page = write_page(tmp_path, '<h1>report</h1><img src="fig.png" alt="a figure">')
    check = check_page(page, screenshot=tmp_path / "shots" / "screenshot.png")
    assert check.ok, check.problems
    assert check.problems == []
    assert len(check.images) == 1
    assert check.images[0]["src"] == "fig.png"
    assert (check.images[0]["natural_width"], check.images[0]["natural_height"]) == (100, 50)
    assert check.screenshot == tmp_path / "shots" / "screenshot.png"
    assert check.screenshot.read_bytes()[:8] == PNG_MAGIC
    assert check.url == page.as_uri()


def test_lazy_images_far_below_the_fold_are_loaded_too(chromium, tmp_path):
    write_png(tmp_path / "fig.png")
    page = write_page(tmp_path, '<div style="height: 20000px"></div>'
                                '<img src="fig.png" loading="lazy" alt="far down">')
    check = check_page(page)
    assert check.ok, check.problems
    assert check.images[0]["natural_width"] == 100
    assert check.screenshot is None


def test_a_missing_image_is_reported(chromium, tmp_path):
    write_png(tmp_path / "fig.png")
    page = write_page(tmp_path, '<img src="fig.png"><img src="missing.png">')
    check = check_page(page)
    assert not check.ok
    assert check.broken_images == ["missing.png"]
    assert [img["natural_width"] for img in check.images] == [100, 0]
    assert any("missing.png" in e and "ERR_FILE_NOT_FOUND" in e for e in check.console_errors)
    assert "image did not load: missing.png" in check.problems


def test_console_error_is_reported(chromium, tmp_path):
    page = write_page(tmp_path, '<script>console.error("boom"); console.log("fine")</script>')
    check = check_page(page)
    assert not check.ok
    assert len(check.console_errors) == 1
    assert check.console_errors[0].startswith("console.error: boom")


def test_network_requests_are_blocked_and_reported(chromium, tmp_path):
    page = write_page(tmp_path, '<img src="http://example.com/x.png">'
                                '<script>fetch("https://example.com/data.json")'
                                '.catch(() => {})</script>')
    check = check_page(page)
    assert not check.ok
    assert check.broken_images == ["http://example.com/x.png"]
    blocked = [e for e in check.console_errors if e.startswith("network request blocked")]
    assert any(e.endswith("http://example.com/x.png") for e in blocked), check.console_errors
    assert any(e.endswith("https://example.com/data.json") for e in blocked), check.console_errors


def test_an_uncaught_exception_is_reported(chromium, tmp_path):
    page = write_page(tmp_path, '<script>throw new TypeError("kaput")</script>')
    check = check_page(page)
    assert not check.ok
    assert check.console_errors == ["uncaught exception: TypeError: kaput"]


def test_a_missing_html_file_is_a_clear_error(tmp_path):
    with pytest.raises(RobustkitError, match="no HTML file"):
        check_page(tmp_path / "nope.html")


def test_a_wrong_robustkit_chromium_is_an_error_not_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTKIT_CHROMIUM", str(tmp_path / "no-such-browser"))
    with pytest.raises(RobustkitError, match="ROBUSTKIT_CHROMIUM"):
        find_chromium()


def test_no_chromium_is_a_clear_error_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("ROBUSTKIT_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no browser on PATH
    assert find_chromium() is None
    page = write_page(tmp_path, "<p>hi</p>")
    with pytest.raises(RobustkitError, match="apt-get install"):
        check_page(page)


def test_importing_robustkit_does_not_import_playwright():
    code = ("import sys, robustkit, robustkit.report, robustkit.report.browser; "
            "sys.exit('playwright was imported' if 'playwright' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
