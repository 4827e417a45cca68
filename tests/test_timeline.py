"""The HTML timeline: its data, its one self-contained file, and how it renders.

``timeline_data`` and ``render_html`` are checked directly and through the
``agent-trace html`` command; the ``browser`` test opens the file in headless
Chromium (Debian package ``chromium``, driven by Playwright), clicks a span and
an event, checks the payload panel, and screenshots the page. It may skip only
outside CI (``CI`` unset) when Chromium or Playwright is missing.
Set ``AGENT_TRACE_SCREENSHOT=docs/timeline.png`` to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_cli import ok, record

import agent_trace as at
from agent_trace.events import AgentEvent, format_timestamp, uuid7
from agent_trace.projections import build_session_summary
from agent_trace.timeline import render_html, timeline_data

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('timeline')}/x.db"
    record(url)
    return url


@pytest.fixture(scope="module")
def events(store) -> list[AgentEvent]:
    return at.get_events_sync("research-03", store=store)


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of each script element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self._script = attrs.get("id") or f"script-{len(self.scripts)}"
            self.scripts[self._script] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts[self._script] += data


def parse(html: str) -> tuple[Page, dict]:
    """The page's tags and its data as ``timeline_data`` shapes it (spans and
    events as dicts, each event with its payload from the payload lines)."""
    page = Page()
    page.feed(html)
    data = json.loads(page.scripts["trace-data"])
    fields = data.pop("span_fields")
    data["spans"] = [dict(zip(fields, values, strict=True)) for values in data["spans"]]
    lines = page.scripts["trace-payloads"].split("\n")
    assert len(lines) == len(data["events"])
    data["events"] = [
        {
            "version": v,
            "offset_ms": off,
            "event_type": t,
            "span_id": sp,
            "timestamp": ts,
            "payload": json.loads(line),
        }
        for (v, off, t, sp, ts), line in zip(data["events"], lines, strict=True)
    ]
    return page, data


def test_timeline_data(events):
    data = timeline_data(events)
    summary = build_session_summary(events)
    assert data["session_id"] == "research-03"
    assert data["summary"]["total_tokens"] == summary.total_tokens
    assert data["summary"]["failures"] == 1
    assert data["summary"]["tool_calls"] == 5
    assert len(data["events"]) == len(events)
    spans = data["spans"]
    assert [s["kind"] for s in spans].count("decision") == 6
    by_id = {s["span_id"]: s for s in spans}
    for s in spans:
        assert 0 <= s["start_ms"] <= s["end_ms"] <= data["duration_ms"] + 1e-6
        if s["parent_span_id"]:
            parent = by_id[s["parent_span_id"]]
            assert s["depth"] == parent["depth"] + 1
            # A decision has no start event: it starts with its first call, on the
            # same clock (never end - duration, which lands after that call's start).
            assert parent["start_ms"] <= s["start_ms"]
            assert s["end_ms"] <= parent["end_ms"]
    failed = [s for s in spans if s["status"] == "error"]
    assert [(s["kind"], s["name"]) for s in failed] == [("tool", "fetch_page")]
    assert "no response from" in failed[0]["error"]
    llm = next(s for s in spans if s["kind"] == "llm")
    assert llm["model"] == "fake-gpt-4o-mini" and llm["tokens"] == 49
    assert all(s["versions"] for s in spans if s["kind"] != "decision" or s["versions"])


def test_html_is_one_self_contained_file(store, tmp_path):
    target = tmp_path / "trace.html"
    ok("--store", store, "html", "research-03", "-o", str(target))
    html = target.read_text()
    page, data = parse(html)
    assert data["session_id"] == "research-03"
    assert len(data["spans"]) == 18
    for tag, attrs in page.tags:
        # Nothing is fetched: no external scripts, styles, images, frames or fonts.
        assert tag not in ("link", "iframe", "img", "object", "embed"), tag
        assert "src" not in attrs, (tag, attrs)
        assert "href" not in attrs, (tag, attrs)
    assert "@import" not in html and "url(" not in html
    csp = next(a for t, a in page.tags if t == "meta" and a.get("http-equiv"))
    assert "default-src 'none'" in csp["content"]
    assert page.tags[0] == ("html", {"lang": "en"})
    assert "<title>agent_trace · research-03</title>" in html


def test_payloads_cannot_break_out_of_the_page():
    ts = format_timestamp(1_700_000_000_000_000_000)
    nasty = "</script><script>alert(1)</script><!--"
    ev = AgentEvent(uuid7(), "s-1", "user_message_received", ts, {"message": nasty}, 1, 1)
    html = render_html([ev], title="<b>x</b>")
    assert nasty not in html
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in html
    page, data = parse(html)
    assert data["events"][0]["payload"]["message"] == nasty
    assert data["spans"] == []
    assert sum(1 for tag, _ in page.tags if tag == "script") == 3


def test_running_and_orphan_spans_still_draw():
    """A session cut short: a tool started but never finished, under an unfinished decision."""
    t = 1_700_000_000_000_000_000
    mk = lambda i, kind, payload, span=None, parent=None: AgentEvent(  # noqa: E731
        uuid7(), "s-2", kind, format_timestamp(t + i * 1_000_000), payload, i, i, span, parent
    )
    evs = [
        mk(1, "session_started", {"metadata": {}}),
        mk(2, "tool_started", {"tool": "search", "args": {"q": 1}}, "a", "d"),
    ]
    data = timeline_data(evs)
    spans = {s["span_id"]: s for s in data["spans"]}
    assert spans["a"]["status"] == "running"
    assert spans["a"]["end_ms"] == data["duration_ms"]
    assert spans["d"]["kind"] == "call" and spans["a"]["depth"] == 1
    with pytest.raises(ValueError):
        timeline_data([])


# --- in a real browser --------------------------------------------------------------


def _browser_or_skip():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install playwright)")
        sync_playwright = None
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test; missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    return sync_playwright


def png_colors(png: bytes, limit: int = 1000) -> int:
    """How many distinct pixel colours an 8-bit RGB/RGBA PNG has (up to ``limit``)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    colors: set[bytes] = set()
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        if y % 4 == 0:
            colors.update(bytes(line[x : x + 3]) for x in range(0, stride, channels * 4))
            if len(colors) >= limit:
                return len(colors)
        prev = line
    return len(colors)


@pytest.mark.browser
def test_timeline_in_headless_chromium(store, tmp_path):
    sync_playwright = _browser_or_skip()
    target = tmp_path / "trace.html"
    ok("--store", store, "html", "research-03", "-o", str(target))
    requests: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(target.as_uri())
            page.wait_for_selector(".span-row")
            assert errors == []
            assert page.locator(".span-row").count() == 18
            assert page.locator("#events tbody tr").count() == 34
            assert page.locator("[data-total=failures] .v").inner_text() == "1"
            tokens = page.locator("[data-total=tokens] .v").inner_text()
            assert tokens == "853"
            # Every bar is drawn with a width on the axis.
            widths = page.eval_on_selector_all(
                ".bar", "bars => bars.map(b => b.getBoundingClientRect().width)"
            )
            assert len(widths) == 18 and min(widths) >= 1

            # Click the failed span: its events' payloads appear in the panel.
            failed = page.locator(".span-row[data-status=error]")
            assert failed.count() == 1
            failed.click()
            panel = page.locator("#payload").inner_text()
            assert "TimeoutError" in panel and "stats.unreachable.invalid" in panel
            assert "FAILED" in page.locator("#payload-title").inner_text()
            assert page.locator("#events tr.selected").count() == 2  # tool_started + tool_failed
            shot = page.screenshot(full_page=True)

            # Click an event row: that event's payload.
            page.locator("#events tbody tr[data-version='2']").click()
            assert "How fast did heat pump sales grow" in page.locator("#payload").inner_text()

            blank = context.new_page()
            blank.set_viewport_size({"width": 1400, "height": 900})
            blank.goto("about:blank")
            blank_shot = blank.screenshot()
        finally:
            context.close()
    assert [u for u in requests if not u.startswith("file://")] == []  # offline
    (tmp_path / "timeline.png").write_bytes(shot)
    keep = os.environ.get("AGENT_TRACE_SCREENSHOT")
    if keep:
        shutil.copy(tmp_path / "timeline.png", keep)
    assert png_colors(blank_shot) == 1
    assert png_colors(shot) > 20, "the screenshot is blank"


def _at(i_us: int) -> str:
    return format_timestamp(1_700_000_000_000_000_000 + i_us * 1000)


def test_a_late_stamped_decision_still_starts_with_its_first_call():
    """The decision event is stamped after its duration is measured (capture runs in
    between): end minus duration lands after its call's start. Positions stay on the
    wall clock: the decision starts no later than the call inside it."""
    mk = lambda v, us, kind, payload, span=None, parent=None: AgentEvent(  # noqa: E731
        uuid7(), "s-3", kind, _at(us), payload, v, v, span, parent
    )
    evs = [
        mk(1, 0, "session_started", {"metadata": {}}),
        mk(2, 1000, "tool_started", {"tool": "search", "args": {}}, "t", "d"),
        mk(3, 5000, "tool_executed", {"tool": "search", "result": 1, "duration_ms": 4.0}, "t", "d"),
        # Measured 9.1 ms from 0.9 ms, but stamped at 10.6 ms: end - duration = 1.5 ms.
        mk(4, 10600, "decision_made", {"decision": "pick", "choice": 1, "duration_ms": 9.1}, "d"),
        # A decision with nothing inside: end - duration is all there is.
        mk(5, 20000, "decision_made", {"decision": "leaf", "choice": 2, "duration_ms": 3.0}, "e"),
    ]
    spans = {s["span_id"]: s for s in timeline_data(evs)["spans"]}
    assert spans["t"]["start_ms"] == 1.0
    assert spans["d"]["start_ms"] == 1.0 and spans["d"]["end_ms"] == 10.6
    assert spans["d"]["duration_ms"] == 9.1  # shown as measured
    assert spans["e"]["start_ms"] == 17.0 and spans["e"]["end_ms"] == 20.0


def test_marker_text_in_a_payload_is_left_alone():
    markers = "__AGENT_TRACE_TITLE__ /*__AGENT_TRACE_DATA__*/null __AGENT_TRACE_PAYLOADS__"
    ev = AgentEvent(uuid7(), "s-4", "user_message_received", _at(0), {"message": markers}, 1, 1)
    _, data = parse(render_html([ev], title="t"))
    assert data["events"][0]["payload"]["message"] == markers
    assert "<title>t</title>" in render_html([ev], title="t")


def big_session(calls: int) -> list[AgentEvent]:
    """A long session: ``calls`` rounds of decision -> LLM call -> tool call (7 events each)."""
    evs: list[AgentEvent] = []

    def add(kind, payload, span=None, parent=None):
        n = len(evs) + 1
        evs.append(AgentEvent(uuid7(), "long", kind, _at(n * 100), payload, n, n, span, parent))

    add("session_started", {"metadata": {"user": "u"}})
    for i in range(calls):
        d, llm, tool = f"d{i}", f"l{i}", f"t{i}"
        add("llm_started", {"name": "chat", "args": {"q": i}}, llm, d)
        add("llm_responded", {"name": "chat", "response": "x" * 200, "duration_ms": 0.05}, llm, d)
        add("tool_started", {"tool": "search", "args": {"n": i}}, tool, d)
        if i % 97 == 5:
            add(
                "tool_failed",
                {"tool": "search", "error": f"boom {i}", "duration_ms": 0.05},
                tool,
                d,
            )
        else:
            add(
                "tool_executed",
                {"tool": "search", "result": [i] * 20, "duration_ms": 0.05},
                tool,
                d,
            )
        add(
            "decision_made",
            {"decision": "next", "choice": {"tool": "search"}, "duration_ms": 0.3},
            d,
        )
        add("observation", {"i": i, "text": f"step {i}"})
        add("observation", {"i": i, "text": "more"})
    return evs


@pytest.mark.browser
def test_a_long_session_draws_only_the_rows_in_view(tmp_path):
    sync_playwright = _browser_or_skip()
    evs = big_session(1000)  # 7,001 events, 3,000 spans
    target = tmp_path / "long.html"
    target.write_text(render_html(evs))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(target.as_uri())
            page.wait_for_function("window.agentTrace && window.agentTrace.ready")
            assert errors == []
            drawn_events = page.locator("#events tbody tr").count()
            drawn_spans = page.locator(".span-row").count()
            assert 20 <= drawn_events <= 120 and 20 <= drawn_spans <= 120
            # Scroll the events list to its end: the last events are drawn, in place.
            page.eval_on_selector("#events-wrap", "w => { w.scrollTop = w.scrollHeight; }")
            last = page.locator(f"#events tbody tr[data-version='{len(evs)}']")
            last.wait_for()
            assert page.locator("#events tbody tr").count() <= 120
            box, wrap = last.bounding_box(), page.locator("#events-wrap").bounding_box()
            assert (
                wrap["y"] <= box["y"] and box["y"] + box["height"] <= wrap["y"] + wrap["height"] + 1
            )
            last.click()
            assert '"more"' in page.locator("#payload").inner_text()  # parsed on click
            # A failed tool call far down the waterfall: reveal, click, its payloads.
            failed_index = 3 * 975 + 2  # depth-first: decision, llm, tool per round
            page.eval_on_selector("#span-scroll", f"s => {{ s.scrollTop = {failed_index} * 23; }}")
            row = page.locator(".span-row[data-span-id='t975']")
            row.wait_for()
            assert row.get_attribute("data-status") == "error"
            row.click()
            assert "boom 975" in page.locator("#payload").inner_text()
            assert page.locator("#events tr.selected").count() == 2  # revealed and marked
            assert errors == []
        finally:
            browser.close()
