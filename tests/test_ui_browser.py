"""``agent-trace ui`` in a real headless Chromium: list -> search -> session -> payload ->
compare -> stats, and a new session appearing live while the list is open.

The server is the console script on a real SQLite store (``ui_helpers.UIServer``);
Chromium is Debian's, driven by Playwright. It may skip only outside CI (``CI``
unset) when Chromium or Playwright is missing. Every request must go to the
server itself. Set ``AGENT_TRACE_SCREENSHOT_DIR=docs`` to keep the screenshots
(``ui-sessions.png``, ``ui-session.png``, ``ui-compare.png``, ``ui-stats.png``).
"""

from __future__ import annotations

import os
import shutil

import pytest
from test_cli import record
from test_timeline import CHROMIUM, _browser_or_skip, png_colors
from ui_helpers import UIServer, write_session

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.browser
def test_ui_in_headless_chromium(tmp_path):
    sync_playwright = _browser_or_skip()
    path = tmp_path / "ui.db"
    record(f"sqlite:///{path}")
    write_session(path, "run-a", ["web_search", "fetch_page", "calculator"])
    write_session(
        path, "run-b", ["web_search", "calculator", "calculator"], failed_tool="calculator"
    )
    shots: dict[str, bytes] = {}
    requests: list[str] = []
    errors: list[str] = []
    with UIServer(f"sqlite:///{path}") as srv, sync_playwright() as p:
        base = srv.base
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            rows = page.locator("#sessions-table tbody tr[data-session-id]")

            # The list; "/" focuses the search box, Enter searches, the URL keeps it.
            page.goto(base + "/")
            assert rows.count() == 10
            page.keyboard.press("/")
            page.keyboard.type("heat pump")
            page.keyboard.press("Enter")
            page.wait_for_url("**/?q=heat+pump*")
            found = rows.evaluate_all("rs => rs.map(r => r.dataset.sessionId)")
            assert "research-03" in found and "research-00" not in found
            # Sorting is a link; back and forward work.
            page.click("th a:has-text('tokens')")
            page.wait_for_url("**sort=tokens**")
            page.go_back()
            page.wait_for_url("**/?q=heat+pump")
            page.go_back()
            page.wait_for_url(base + "/")
            assert rows.count() == 10

            # Open a session; click its failed call: the payloads show.
            page.click("a[href='/sessions/research-03']")
            page.wait_for_selector(".span-row")
            assert page.locator(".span-row").count() == 18
            page.locator(".span-row[data-status=error]").click()
            assert "TimeoutError" in page.locator("#payload").inner_text()
            page.locator("#events tbody tr[data-version='2']").click()
            assert "heat pump" in page.locator("#payload").inner_text()
            shots["session"] = page.screenshot()
            # A link to one event selects it (what the comparison links to).
            page.goto(base + "/sessions/run-b#v=6")
            page.wait_for_selector("#events tr.selected")
            assert '"calculator"' in page.locator("#payload").inner_text()

            # Tick two sessions in the list and compare them.
            page.goto(base + "/")
            page.check("#sessions-table input[value='run-a']")
            page.check("#sessions-table input[value='run-b']")
            page.click("#compare-picked")
            page.wait_for_url("**/compare?a=run-a&b=run-b")
            marked = page.locator("#first-divergence")
            assert marked.locator(".first-divergence").inner_text() == "first divergence"
            assert "different choice" in page.locator("#verdict").inner_text()
            marked.locator("td.point").nth(1).click()
            # (A locator wait: the page's policy forbids the eval a wait_for_function needs.)
            page.locator("#payload-title", has_text="run-b · v6").wait_for()
            assert '"calculator"' in page.locator("#payload").inner_text()
            assert "run-b · v6 decision_made" in page.locator("#payload-title").inner_text()
            shots["compare"] = page.screenshot()

            page.click("header.top nav a:has-text('Stats')")
            page.wait_for_selector("#tools-table")
            assert page.locator("[data-total=sessions] .v").inner_text() == "10"
            shots["stats"] = page.screenshot()

            # A new session appears in the open list, marked new, without a reload.
            page.goto(base + "/")
            page.evaluate("window.__sameDocument = true")
            write_session(path, "live-01", ["web_search", "fetch_page"])
            page.wait_for_selector("tr[data-session-id='live-01'].new", timeout=15_000)
            assert page.evaluate("window.__sameDocument") is True
            assert rows.first.get_attribute("data-session-id") == "live-01"
            assert "+1 new" in page.locator("#new-count").inner_text()
            assert "11 sessions" in page.locator("#live").inner_text()
            shots["sessions"] = page.screenshot()
        finally:
            context.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(base)] == []  # nothing but the server
    keep = os.environ.get("AGENT_TRACE_SCREENSHOT_DIR")
    for name, png in shots.items():
        (tmp_path / f"ui-{name}.png").write_bytes(png)
        if keep:
            shutil.copy(tmp_path / f"ui-{name}.png", os.path.join(keep, f"ui-{name}.png"))
        assert png_colors(png) > 20, f"the {name} screenshot is blank"
