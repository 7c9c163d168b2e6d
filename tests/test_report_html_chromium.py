"""The HTML report in a real browser: it renders, its tables sort, and model outputs never run.

Needs Debian's headless `chromium` (CI installs it); skipped with a reason where it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from reports.aggregate import load_run
from reports.render_html import render_html
from reports.report import build_report
from test_report_synthetic_run import PAYLOAD, build_run

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"),
]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def dump_dom(page, tmp_path) -> str:
    result = subprocess.run(
        ["chromium", *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def injected_effects(dom: str) -> list[str]:
    """What the payload would leave behind if it ran (the escaped text itself does not count)."""
    effects = []
    if re.search(r"<title>\s*pwned", dom):
        effects.append("title changed")
    if re.search(r"<body[^>]*data-pwned", dom):
        effects.append("body attribute set")
    if "<div id=\"pwned-marker\"" in dom:
        effects.append("marker element inserted")
    return effects


def test_report_renders_sorts_and_keeps_outputs_inert(tmp_path):
    run = load_run(build_run(tmp_path / "runs"))
    doc = build_report(run)
    page = tmp_path / "report.html"
    page.write_text(render_html(doc), encoding="utf-8")
    dom = dump_dom(page, tmp_path)
    n_tables = len(doc.tables())
    for key in ("full_results", "json_reliability", "efficiency", "beyond_study", "failed"):
        assert f'data-table="{key}"' in dom, key
    # The sort script ran: it marks every data table sortable and counts them on <body>.
    assert re.search(rf'<body[^>]*data-sort-ready="{n_tables}"', dom)
    assert dom.count('class="data sortable"') == n_tables
    # The payload is on the page as text, and none of its effects happened.
    assert "&lt;script&gt;document.title='pwned'" in dom
    assert injected_effects(dom) == []


def test_the_check_would_catch_an_output_that_runs(tmp_path):
    """Control: the same payload dropped in raw (no escaping, no CSP) does run, so the check above can fail."""
    page = tmp_path / "raw.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body>{PAYLOAD}</body></html>")
    effects = injected_effects(dump_dom(page, tmp_path))
    assert "title changed" in effects and "body attribute set" in effects


def test_screenshot_renders(tmp_path):
    run = load_run(build_run(tmp_path / "runs"))
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(run)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        ["chromium", *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
         "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000  # a blank page compresses to a few KB
