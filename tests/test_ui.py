"""``agent-trace ui`` over HTTP: every page and API of a real server process on a real store.

The store holds the research agent's 8 sessions (research-03 has a failed
``fetch_page``) and two hand-made runs, ``run-a`` and ``run-b``, that agree
on their first two decision points and differ at the third (the second
decision). What the list and stats show is checked against the CLI's
``--json`` output and ``agent_trace.replay.diff_sessions``; the browser test
is ``tests/test_ui_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sqlite3
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from stores import pg_helpers
from test_cli import SESSIONS, ok, record, usage_error
from ui_helpers import UIServer, write_session

from agent_trace.events import AgentEvent, format_timestamp
from agent_trace.projections import llm_cost
from agent_trace.replay import diff_sessions_sync
from agent_trace.stores import SQLiteStore
from agent_trace.stores.base import StoreError
from agent_trace.ui.index import Query, SessionIndex
from agent_trace.ui.pages import usd

#: What one hand-made run's LLM call costs (100 + 20 tokens of gpt-4o-mini), as priced
#: by agent_trace itself (genai-prices), so the test follows price updates.
RUN_COST = llm_cost(
    AgentEvent(
        "0",
        "s",
        "llm_responded",
        format_timestamp(time.time_ns()),
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        },
    )
)
assert RUN_COST, "gpt-4o-mini should have a price (genai-prices is in the test extras)"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ui") / "ui.db"
    record(f"sqlite:///{path}")
    write_session(path, "run-a", ["web_search", "fetch_page", "calculator"])
    write_session(
        path, "run-b", ["web_search", "calculator", "calculator"], failed_tool="calculator"
    )
    return path


@pytest.fixture(scope="module")
def server(store_path):
    with UIServer(f"sqlite:///{store_path}") as srv:
        yield srv
    assert srv.returncode == 0, srv.stderr_lines


def events_count(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()


class Links(HTMLParser):
    """Every URL the page would load or link to, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.urls.append((tag, name, value))

    def handle_data(self, data):
        self.text.append(data)


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-session-id="([^"]+)"', html)


# --- the session list -----------------------------------------------------------------------


def test_list_shows_what_the_cli_sessions_command_shows(server, store_path):
    cli_rows = {
        r["session_id"]: r
        for r in json.loads(ok("--store", f"sqlite:///{store_path}", "sessions", "--json"))
    }
    api = server.json("/api/sessions")
    assert api["total"] == len(cli_rows) == 10
    assert api["index"]["caught_up"] and api["index"]["events"] == events_count(store_path)
    for row in api["sessions"]:
        want = cli_rows[row["session_id"]]
        for key in (
            "status",
            "duration_ms",
            "events",
            "tool_calls",
            "tools",
            "tokens",
            "failures",
            "llm_calls",
            "metadata",
            "started_at",
        ):
            assert row[key] == want[key], (row["session_id"], key)
        # Cost as the CLI derives it: the demo's fake model has no price (None, not 0).
        assert (
            row["cost_usd"] == pytest.approx(want["cost_usd"])
            if want["cost_usd"]
            else (row["cost_usd"] is None)
        )
    by_id = {r["session_id"]: r for r in api["sessions"]}
    assert by_id["run-a"]["cost_usd"] == pytest.approx(RUN_COST)
    assert by_id["research-03"]["cost_usd"] is None
    # Newest first, as the CLI.
    assert [r["session_id"] for r in api["sessions"]] == list(cli_rows)

    html = server.text("/")
    assert row_ids(html) == list(cli_rows)
    assert "10 sessions" in html
    page = links(html)
    # Nothing but this server: no CDN, no font, no analytics.
    for tag, name, url in page.urls:
        assert url.startswith(("/", "#", "?")) or url == "data:,", (tag, name, url)
    # Each row links to its session page; research-03's failure shows.
    assert 'href="/sessions/research-03"' in html
    assert re.search(r'<tr data-session-id="research-03" class="failed">', html)
    run_a = re.search(r'<tr data-session-id="run-a">(.*?)</tr>', html).group(1)
    assert f'<td class="num">{usd(RUN_COST)}</td>' in run_a


def test_search_by_id_text_tool_model_status_and_date(server, store_path):
    def ids(query: str) -> list[str]:
        return sorted(r["session_id"] for r in server.json("/api/sessions?" + query)["sessions"])

    assert ids("q=research-0") == sorted(SESSIONS)
    assert ids("q=RUN-") == ["run-a", "run-b"]  # case-insensitive
    # Text: the user's question, the final answer, errors, metadata.
    assert "research-03" in ids("q=heat+pump") and "research-00" not in ids("q=heat+pump")
    assert ids("q=answer+of+run-b") == ["run-b"]
    assert ids("q=no+answer") == ["run-b"]  # an error message
    assert ids("q=%22ada%22") == ["run-a", "run-b"]  # metadata
    assert ids("q=nothing-like-this") == []
    assert ids("tool=fetch_page") == sorted([*SESSIONS, "run-a"])
    assert ids("tool=calculator&status=failed") == ["research-03", "run-b"]
    assert ids("status=failed") == ["research-03", "run-b"]
    assert ids("status=ok") == sorted([*SESSIONS, "run-a", "run-b"])
    assert ids("status=open") == []
    assert ids("model=fake-gpt-4o-mini") == sorted(SESSIONS)
    assert ids("model=gpt-4o-mini") == ["run-a", "run-b"]
    assert ids("model=gpt-5") == []
    today = server.json("/api/sessions")["sessions"][0]["started_at"][:10]
    assert len(ids(f"since={today}&until={today}")) == 10
    assert ids("until=2000-01-01") == [] and ids("since=2999-01-01") == []
    # The page keeps the search in its URL and its form.
    html = server.text("/?q=heat+pump&tool=fetch_page")
    assert 'value="heat pump"' in html and '<option value="fetch_page" selected>' in html


def test_sort_and_pages(server):
    by_tokens = server.json("/api/sessions?sort=tokens&order=desc")["sessions"]
    tokens = [r["tokens"] for r in by_tokens]
    assert tokens == sorted(tokens, reverse=True)
    asc = server.json("/api/sessions?sort=session")["sessions"]  # ids ascend by default
    assert [r["session_id"] for r in asc] == sorted(r["session_id"] for r in asc)
    for key in ("started", "duration", "events", "tools", "cost", "failures", "status"):
        assert server.json(f"/api/sessions?sort={key}&order=asc")["total"] == 10

    pages = [server.json(f"/api/sessions?per_page=4&page={p}") for p in (1, 2, 3)]
    assert [p["pages"] for p in pages] == [3, 3, 3]
    seen = [r["session_id"] for p in pages for r in p["sessions"]]
    assert len(seen) == 10 and len(set(seen)) == 10
    html = server.text("/?per_page=4&page=2&sort=tokens")
    assert "5&ndash;8 of 10 sessions · page 2 of 3" in html
    assert 'rel="prev"' in html and 'rel="next"' in html
    assert "sort=tokens" in re.search(r'<a href="([^"]+)" rel="next"', html).group(1)
    # The current sort column says so, and its link flips the order.
    assert re.search(r'aria-sort="descending"><a href="[^"]*sort=tokens&amp;order=asc', html)


@pytest.mark.parametrize(
    "query, message",
    [
        ("sort=colour", "sort='colour'"),
        ("order=up", "order='up'"),
        ("page=0", "page=0"),
        ("per_page=x", "per_page='x'"),
        ("status=weird", "status='weird'"),
        ("since=yesterday", "since='yesterday'"),
    ],
)
def test_bad_search_parameters_are_400_with_the_reason(server, query, message):
    assert message in server.json(f"/api/sessions?{query}", status=400)["error"]
    assert message.replace("'", "&#x27;") in server.text(f"/?{query}", status=400)


# --- one session ----------------------------------------------------------------------------


def test_session_page_is_the_timeline_with_navigation(server):
    html = server.text("/sessions/research-03")
    assert '<nav class="at-nav"><a href="/">' in html
    data = json.loads(
        re.search(
            r'<script id="trace-data" type="application/json">(.*?)</script>', html, re.S
        ).group(1)
    )
    assert data["session_id"] == "research-03" and len(data["spans"]) == 18
    api = server.json("/api/sessions/research-03")
    assert api["summary"]["total_tokens"] == 853 and api["summary"]["failures"] == 1
    assert api["summary"]["cost_usd"] is None  # an unpriced model
    assert len(api["events"]) == 34
    assert server.json("/api/sessions/run-a")["summary"]["cost_usd"] == pytest.approx(RUN_COST)

    event = server.json("/api/sessions/research-03/events/2")
    assert event["version"] == 2 and "heat pump" in event["payload"]["message"]
    assert "No event v99" in server.json("/api/sessions/research-03/events/99", status=404)["error"]


def test_unknown_session_is_a_404_page_with_near_matches(server):
    status, _, body = server.get("/sessions/research-3")
    html = body.decode()
    assert status == 404
    assert "No session &#x27;research-3&#x27;" in html
    assert 'href="/sessions/research-03"' in html  # did you mean
    missing = server.json("/api/sessions/run-c", status=404)
    assert "run-a" in missing["near"] and "run-b" in missing["near"]


# --- two sessions side by side --------------------------------------------------------------


def test_compare_marks_the_first_divergence(server, store_path):
    expected = diff_sessions_sync("run-a", "run-b", store=f"sqlite:///{store_path}")
    assert expected.index == 2
    api = server.json("/api/compare?a=run-a&b=run-b")
    assert api["diverged"] and api["first_divergence"]["index"] == expected.index
    assert api["first_divergence"]["reason"] == expected.reason == "different choice"
    assert api["first_divergence"]["a"]["value"] == "fetch_page"
    assert api["first_divergence"]["b"]["value"] == "calculator"
    assert api["text"] == expected.render()

    html = server.text("/compare?a=run-a&b=run-b")
    assert html.count("first divergence</span>") == 1
    row = re.search(r'<tr class="divergence" id="first-divergence">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="step">3 <span class="first-divergence">first divergence</span>' in row
    assert "fetch_page" in row and "calculator" in row
    assert "First divergence at decision point 3 of 8: different choice" in html
    # Steps link to the event in each session's timeline.
    assert 'href="/sessions/run-a#v=6"' in row and 'href="/sessions/run-b#v=6"' in row
    assert html.count('class="after"') == 5  # the rows after it are dimmed


def test_compare_identical_runs_and_missing_ones(server):
    api = server.json("/api/compare?a=research-03&b=research-03")
    assert not api["diverged"] and api["first_divergence"] is None
    html = server.text("/compare?a=research-03&b=research-03")
    assert "No divergence" in html and "first divergence</span>" not in html
    assert "Pick two sessions" in server.text("/compare")
    assert server.json("/api/compare?a=run-a", status=400)["error"]
    status, _, body = server.get("/compare?a=run-a&b=run-zz")
    assert status == 404 and "run-zz" in body.decode()
    # The list's "compare selected" without script: ?s=X&s=Y redirects to ?a=X&b=Y.
    assert "first divergence</span>" in server.text("/compare?s=run-a&s=run-b")


# --- stats ------------------------------------------------------------------------------------


def test_stats_match_the_cli(server, store_path):
    cli = json.loads(ok("--store", f"sqlite:///{store_path}", "stats", "--json"))
    api = server.json("/api/stats")
    assert api["sessions"] == cli["sessions"] and api["events"] == cli["events"]
    for name, t in cli["tools"].items():
        for key in ("calls", "failures", "p50_ms", "p95_ms", "mean_ms"):
            assert api["tools"][name][key] == pytest.approx(t[key]), (name, key)
    for name, m in cli["models"].items():
        for key in ("calls", "failures", "input_tokens", "output_tokens", "total_tokens"):
            assert api["models"][name][key] == m[key], (name, key)
        assert api["models"][name]["cost_usd"] == (
            pytest.approx(m["cost_usd"]) if m.get("cost_usd") is not None else None
        )
    assert api["models"]["gpt-4o-mini"]["cost_usd"] == pytest.approx(2 * RUN_COST)
    assert api["cost_usd"] == pytest.approx(2 * RUN_COST)
    assert sum(d["cost_usd"] or 0 for d in api["days"].values()) == pytest.approx(2 * RUN_COST)
    assert {d: v["sessions"] for d, v in api["days"].items()} == cli["sessions_per_day"]
    assert api["failed_sessions"] == 2
    html = server.text("/stats")
    for table in ("tools-table", "models-table", "days-table"):
        assert f'id="{table}"' in html
    assert 'href="/?tool=fetch_page"' in html and 'href="/?model=fake-gpt-4o-mini"' in html
    assert usd(2 * RUN_COST) in html  # the priced model's cost


# --- the server as a whole ----------------------------------------------------------------------


def test_pages_are_read_only_and_local(server, store_path):
    before = events_count(store_path)
    for path in ("/", "/stats", "/compare?a=run-a&b=run-b", "/sessions/run-a"):
        status, headers, _ = server.get(path)
        assert status == 200
        if path != "/sessions/run-a":  # the timeline page carries its own, stricter policy
            assert "default-src 'none'" in headers["content-security-policy"]
            assert "connect-src 'self'" in headers["content-security-policy"]
    assert server.get("/static/ui.css")[0] == 200 and server.get("/static/ui.js")[0] == 200
    # No route writes: OTLP ingest is off unless --otlp.
    status, _, _ = server.post("/v1/traces", b"{}", {"Content-Type": "application/json"})
    assert status in (404, 405)
    assert events_count(store_path) == before
    # Bound to loopback, it answers loopback names only (no DNS rebinding).
    assert server.base.startswith("http://127.0.0.1:")
    assert server.get("/", headers={"Host": "evil.example"})[0] == 400
    assert server.get("/", headers={"Host": "localhost"})[0] == 200


def test_sqlite_is_opened_read_only(store_path, tmp_path):
    async def go() -> None:
        store = SQLiteStore(store_path, read_only=True)
        try:
            assert len(await store.read_all(0, 5)) == 5
            with pytest.raises(StoreError, match="read-only"):
                await store.append(await store.read_all(0, 1))
        finally:
            await store.close()

    asyncio.run(go())
    with pytest.raises(ConnectionError, match="does not exist"):
        SQLiteStore(tmp_path / "missing.db", read_only=True)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()

    async def empty_file() -> None:
        store = SQLiteStore(empty, read_only=True)
        try:
            with pytest.raises(ConnectionError, match="holds no agent_trace events"):
                await store.read_all()
        finally:
            await store.close()

    asyncio.run(empty_file())
    assert empty.stat().st_size == 0  # nothing was created in it


def test_new_sessions_appear_live(store_path, tmp_path):
    path = tmp_path / "live.db"
    shutil.copy(store_path, path)
    with UIServer(f"sqlite:///{path}") as srv:
        start = srv.json("/api/changes")
        assert start["sessions"] == 10
        write_session(path, "live-01", ["web_search"])
        changes = srv.wait_for(lambda: (c := srv.json("/api/changes"))["sessions"] == 11 and c)
        assert changes["position"] > start["position"]
        assert srv.json("/api/sessions")["sessions"][0]["session_id"] == "live-01"
        assert row_ids(srv.text("/"))[0] == "live-01"
        assert srv.json("/api/stats")["sessions"] == 11

        # Whatever a session id or payload holds, it stays text on every page.
        nasty = '<img src=x onerror="alert(1)">'
        write_session(path, nasty, ["web_search"])
        srv.wait_for(lambda: srv.json("/api/changes")["sessions"] == 12)
        quoted = "%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E"
        for page in ("/", "/?q=onerror", f"/compare?a={quoted}&b=live-01", "/stats"):
            html = srv.text(page)
            assert nasty not in html and "<img" not in html, page
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in srv.text("/")
        assert nasty in srv.json(f"/api/sessions/{quoted}")["session_id"]


def test_command_line_errors(tmp_path, store_path):
    line = usage_error("--store", f"sqlite:///{tmp_path}/missing.db", "ui")
    assert "no store at" in line and "missing.db" in line
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert "cannot read the store" in usage_error("--store", f"sqlite:///{junk}", "ui")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = usage_error("--store", f"sqlite:///{store_path}", "ui", "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "--otlp" in ok("ui", "--help")


# --- the index itself ---------------------------------------------------------------------------


def test_index_folds_pages_once_and_in_order(store_path):
    async def events():
        store = SQLiteStore(store_path, read_only=True)
        try:
            return await store.read_all()
        finally:
            await store.close()

    all_events = asyncio.run(events())
    index = SessionIndex()
    index.add(all_events[:100])
    index.add(all_events[50:])  # overlapping page: nothing twice
    assert index.event_count == len(all_events) and index.position == all_events[-1].position
    total, _ = index.sessions(Query())
    assert total == 10
    assert sum(r.events for r in index.rows.values()) == len(all_events)
    assert Query.from_params({"q": " heat ", "sort": "tokens"}).params() == {
        "q": "heat",
        "sort": "tokens",
    }
    with pytest.raises(ValueError, match="sort='x'"):
        Query.from_params({"sort": "x"})
    assert index.near("research-3")[0].startswith("research-")


def test_benchmark_runs_quick(tmp_path):
    """benchmarks/bench_ui.py --quick runs and prints its table (no numbers asserted)."""
    import subprocess
    import sys

    from test_cli import REPO, env

    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_ui.py"), "--quick", "--samples", "3"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    for metric in ("index complete", "first page", "text search", "stats page", "session page"):
        assert metric in proc.stdout, proc.stdout
    assert list(tmp_path.iterdir()) == []


@pg_helpers.PG_MARKS[0]
@pg_helpers.PG_MARKS[1]
def test_a_postgres_store_is_listed_and_followed_live(tmp_path):
    """Any store works: the index follows PostgreSQL through the same protocol."""
    url = pg_helpers.pg_url(tmp_path)
    try:
        write_session(url, "pg-a", ["web_search", "fetch_page"])
        write_session(url, "pg-b", ["web_search", "calculator"])
        with UIServer(url) as srv:
            listed = {r["session_id"] for r in srv.json("/api/sessions")["sessions"]}
            assert listed == {"pg-a", "pg-b"}
            assert srv.json("/api/compare?a=pg-a&b=pg-b")["first_divergence"]["index"] == 2
            write_session(url, "pg-live", ["calculator"])
            srv.wait_for(lambda: srv.json("/api/changes")["sessions"] == 3)
            assert "pg-live" in srv.text("/sessions/pg-live")
        assert srv.returncode == 0
    finally:
        pg_helpers.drop_test_schemas()


def test_example_serves_the_ui_from_the_agents_process(tmp_path):
    """examples/ui_live.py: an in-memory store, the UI on the agent's own event loop."""
    import subprocess
    import sys

    from test_cli import REPO, env

    example = str(REPO / "examples" / "ui_live.py")
    proc = subprocess.run(
        [sys.executable, example, "--sessions", "3", "--port", "0", "--interval", "0"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("UI at http://127.0.0.1:")
    assert lines[1:] == [f"weather-{i:02d}  ok  52 tokens  ['lookup_weather']" for i in (2, 1, 0)]
    assert list(tmp_path.iterdir()) == []  # nothing on disk
