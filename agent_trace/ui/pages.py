"""The UI's HTML pages, rendered on the server from the index and the store's events.

Every page is a plain document with a shareable URL: search, sort and page
are query parameters, so links, back/forward and bookmarks just work. Each
function returns the whole document as a string; every value from the store
goes through ``_e`` (HTML escaping). ``static/ui.js`` adds live updates,
the two-session picker and payloads on click; the pages read without it.
The session page itself is the HTML timeline (``agent_trace.timeline``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from agent_trace.replay import DecisionPoint, SessionDiff
from agent_trace.ui.index import SORT_KEYS, Query, SessionIndex, SessionRow

__all__ = [
    "compare_page",
    "error_page",
    "session_nav",
    "sessions_page",
    "stats_page",
]

_COLUMNS = (
    ("session", "session"),
    ("started", "started (UTC)"),
    ("duration", "duration"),
    ("events", "events"),
    ("tools", "tools"),
    ("tokens", "tokens"),
    ("cost", "cost"),
    ("failures", "failures"),
    ("status", "status"),
)


NONE = "\u2013"  # an en dash: no value (unknown, not zero)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def ms(value: float | None) -> str:
    if value is None:
        return NONE
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def num(value: int | float | None) -> str:
    return NONE if value is None else f"{value:,}"


def usd(value: float | None) -> str:
    """A cost: ``$1.25``, ``$0.0123``, ``$0.000027``; a dash when no call could be priced."""
    if value is None:
        return NONE
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    if value >= 0.01:
        return f"${value:.4f}"
    return f"${value:.6f}" if value >= 0.000001 else "<$0.000001"


def when(ts: str | None) -> str:
    return NONE if not ts else ts[:19].replace("T", " ")


def _url(path: str, params: dict[str, str]) -> str:
    return path + ("?" + urlencode(params) if params else "")


def session_url(session_id: str) -> str:
    return "/sessions/" + quote(session_id, safe="")


def _layout(
    title: str, active: str, main: str, index: SessionIndex, store_name: str, live: bool = False
) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == active else ""}>{label}</a>'
        for key, href, label in (
            ("sessions", "/", "Sessions"),
            ("compare", "/compare", "Compare"),
            ("stats", "/stats", "Stats"),
        )
    )
    st = index.status()
    banner = ""
    if st["error"]:
        banner = f'<div class="banner bad" id="banner">store unreachable: {_e(st["error"])}</div>'
    elif not st["caught_up"]:
        banner = (
            f'<div class="banner" id="banner">indexing the store: {num(st["events"])} events '
            "read so far; the list fills in as it goes</div>"
        )
    else:
        banner = '<div class="banner" id="banner" hidden></div>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · agent_trace</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/ui.css">
</head>
<body data-page="{active}" data-position="{st["position"]}"{" data-live" if live else ""}>
<header class="top">
  <a class="brand" href="/">agent_trace</a>
  <nav>{nav}</nav>
  <span class="store" title="{_e(store_name)}">{_e(_tail(store_name, 48))}</span>
  <span class="live" id="live" title="sessions and events in the index">\
{num(st["sessions"])} sessions · {num(st["events"])} events</span>
</header>
{banner}
<main>
{main}
</main>
<script src="/static/ui.js"></script>
</body>
</html>
"""


def _tail(text: str, width: int) -> str:
    """The end of a long store URL (the file name is what tells stores apart)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _options(values: Iterable[str], selected: str, empty: str) -> str:
    out = [f'<option value="">{_e(empty)}</option>']
    for v in values:
        sel = " selected" if v == selected else ""
        out.append(f'<option value="{_e(v)}"{sel}>{_e(v)}</option>')
    return "".join(out)


def sessions_page(index: SessionIndex, query: Query, store_name: str) -> str:
    """The session list: search form, sortable columns, pages, live updates."""
    total, rows = index.sessions(query)
    pages = max((total + query.per_page - 1) // query.per_page, 1)
    statuses = ("ok", "error", "cancelled", "open", "failed")
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{_e(v)}">'
        for k, v in query.params(page=1).items()
        if k in ("sort", "order", "per_page")
    )
    tools = _options(sorted(index.tools), query.tool, "any tool")
    models = _options(sorted(index.models), query.model, "any model")
    status = _options(statuses, query.status, "any status")
    form = f"""<form class="search" method="get" action="/" role="search">
  <input type="search" name="q" id="q" value="{_e(query.q)}" autocomplete="off"
    placeholder="id or text (press / to search)" aria-label="search session id or text">
  <select name="tool" aria-label="tool">{tools}</select>
  <select name="model" aria-label="model">{models}</select>
  <select name="status" aria-label="status">{status}</select>
  <label>from <input type="date" name="since" value="{_e(query.since[:10])}"></label>
  <label>to <input type="date" name="until" value="{_e(query.until[:10])}"></label>
  {hidden}
  <button type="submit">Search</button>
  {'<a href="/">clear</a>' if query.filtered else ""}
</form>"""
    head = ['<th class="pick"><span class="sr">compare</span></th>']
    for key, label in _COLUMNS:
        assert key in SORT_KEYS
        if key == query.sort:
            order = "asc" if query.order == "desc" else "desc"
            arrow = " ▼" if query.order == "desc" else " ▲"
            aria = f' aria-sort="{"descending" if query.order == "desc" else "ascending"}"'
        else:
            order, arrow, aria = ("asc" if key in ("session", "status") else "desc"), "", ""
        href = _url("/", query.params(sort=key, order=order, page=1))
        num_cls = "" if key in ("session", "started", "status") else ' class="num"'
        head.append(f'<th{num_cls}{aria}><a href="{_e(href)}">{label}{arrow}</a></th>')
    body = "\n".join(_session_row(r) for r in rows)
    if not rows:
        what = "no sessions match" if query.filtered else "no sessions in the store yet"
        body = f'<tr class="empty"><td colspan="{len(_COLUMNS) + 1}">{what}</td></tr>'
    first = (query.page - 1) * query.per_page + 1
    shown = f"{num(first)}&ndash;{num(first + len(rows) - 1)} of " if rows else ""
    count = f'<p class="count" id="match-count">{shown}{num(total)} sessions'
    count += f" · page {query.page} of {pages}</p>"
    main = f"""{form}
<div class="toolbar">
  {count}
  <span id="new-count" class="new-count" hidden></span>
  <button type="button" id="compare-picked" disabled
    title="tick two sessions">Compare selected</button>
</div>
<table class="sessions" id="sessions-table">
<thead><tr>{"".join(head)}</tr></thead>
<tbody>
{body}
</tbody>
</table>
{_pager(query, pages)}"""
    title = f"Sessions matching {query.q}" if query.q else "Sessions"
    return _layout(title, "sessions", main, index, store_name, live=True)


def _session_row(r: SessionRow) -> str:
    sid = _e(r.session_id)
    s = r.summary
    cls = ' class="failed"' if r.failed else ""
    return (
        f'<tr data-session-id="{sid}"{cls}>'
        f'<td class="pick"><input type="checkbox" name="s" value="{sid}" '
        f'aria-label="pick {sid} to compare"></td>'
        f'<td class="id"><a href="{_e(session_url(r.session_id))}">{sid}</a></td>'
        f"<td>{_e(when(r.started_at))}</td>"
        f'<td class="num">{ms(r.duration_ms)}</td>'
        f'<td class="num">{num(r.events)}</td>'
        f'<td class="num" title="{_e(", ".join(r.tools))}">{num(r.tool_calls)}</td>'
        f'<td class="num" title="{num(s["input_tokens"])} in / {num(s["output_tokens"])} out">'
        f"{num(s['total_tokens'])}</td>"
        f'<td class="num">{usd(r.cost)}</td>'
        f'<td class="num{" bad" if r.failures else ""}">{num(r.failures)}</td>'
        f'<td><span class="status st-{_e(r.status)}">{_e(r.status)}</span></td>'
        "</tr>"
    )


def _pager(query: Query, pages: int) -> str:
    if pages <= 1:
        return '<nav class="pager" aria-label="pages"></nav>'
    links = []
    for label, page, rel in (
        ("&laquo; first", 1, ""),
        ("&lsaquo; previous", query.page - 1, "prev"),
        ("next &rsaquo;", query.page + 1, "next"),
        ("last &raquo;", pages, ""),
    ):
        if 1 <= page <= pages and page != query.page:
            rel_attr = f' rel="{rel}"' if rel else ""
            href = _url("/", query.params(page=page))
            links.append(f'<a href="{_e(href)}"{rel_attr}>{label}</a>')
        else:
            links.append(f'<span class="off">{label}</span>')
    return f'<nav class="pager" aria-label="pages">{" ".join(links)}</nav>'


# --- one session: the timeline, with the UI's navigation on top -----------------------


def session_nav(session_id: str) -> str:
    """Links above the timeline of the session page (trusted markup for ``render_html``)."""
    sid = quote(session_id, safe="")
    return (
        '<nav class="at-nav"><a href="/">← sessions</a>'
        f'<a href="/compare?a={_e(sid)}">compare with…</a>'
        '<a href="/stats">stats</a>'
        f'<a href="/api/sessions/{_e(sid)}">JSON</a></nav>'
    )


# --- two sessions side by side ----------------------------------------------------------


def compare_page(
    index: SessionIndex,
    store_name: str,
    a: str,
    b: str,
    rows: tuple[SessionRow | None, SessionRow | None] = (None, None),
    points: tuple[Sequence[DecisionPoint], Sequence[DecisionPoint]] = ((), ()),
    diff: SessionDiff | None = None,
) -> str:
    """The picker; with two sessions, their decision points aligned, the first divergence marked."""
    _, recent = index.sessions(Query(per_page=500))  # the newest, as the list has them
    datalist = "".join(f'<option value="{_e(r.session_id)}">' for r in recent)
    form = f"""<form class="search" method="get" action="/compare">
  <label>A <input name="a" value="{_e(a)}" list="session-ids" placeholder="session id"
    required></label>
  <label>B <input name="b" value="{_e(b)}" list="session-ids" placeholder="session id"
    required></label>
  <button type="submit">Compare</button>
  <datalist id="session-ids">{datalist}</datalist>
</form>"""
    if diff is None:
        main = form + (
            '<p class="hint">Pick two sessions (or tick two in the '
            '<a href="/">list</a>): their decision points — decisions, tool calls with '
            "arguments, LLM outputs, final answers — side by side, the first divergence "
            "marked.</p>"
        )
        return _layout("Compare", "compare", main, index, store_name)
    pa, pb = points
    cards = _card("A", a, rows[0]) + _card("B", b, rows[1])
    if diff:
        verdict = (
            f'<p class="verdict bad" id="verdict">First divergence at decision point '
            f"{(diff.index or 0) + 1} of {max(len(pa), len(pb))}: {_e(diff.reason)}</p>"
        )
    else:
        verdict = (
            f'<p class="verdict good" id="verdict">No divergence: the two runs agree on all '
            f"{diff.compared} decision points.</p>"
        )
    body = []
    for i in range(max(len(pa), len(pb))):
        cls = ""
        label = str(i + 1)
        if diff and i == diff.index:
            cls = ' class="divergence" id="first-divergence"'
            label += ' <span class="first-divergence">first divergence</span>'
        elif diff and diff.index is not None and i > diff.index:
            cls = ' class="after"'
        cells = "".join(
            _point_cell(sid, pts[i] if i < len(pts) else None) for sid, pts in ((a, pa), (b, pb))
        )
        body.append(f'<tr{cls}><td class="step">{label}</td>{cells}</tr>')
    if not body:
        body.append('<tr class="empty"><td colspan="3">no decision points in either</td></tr>')
    main = f"""{form}
<div class="cards">{cards}</div>
{verdict}
<div class="compare-wrap">
<table class="compare" id="compare-table">
<thead><tr><th>#</th><th>A · {_e(a)}</th><th>B · {_e(b)}</th></tr></thead>
<tbody>
{"".join(body)}
</tbody>
</table>
<aside class="payload-panel" id="payload-panel">
  <div id="payload-title" class="muted">click a step to see its event's payload</div>
  <pre id="payload"></pre>
</aside>
</div>"""
    return _layout(f"Compare {a} and {b}", "compare", main, index, store_name)


def _card(label: str, session_id: str, row: SessionRow | None) -> str:
    if row is None:
        return f'<div class="card"><h2>{label}</h2><p>{_e(session_id)}</p></div>'
    s = row.summary
    return (
        f'<div class="card" data-side="{label}"><h2>{label} · '
        f'<a href="{_e(session_url(session_id))}">{_e(session_id)}</a></h2>'
        f'<p><span class="status st-{_e(row.status)}">{_e(row.status)}</span> · '
        f"{ms(row.duration_ms)} · {num(row.events)} events · {num(s['total_tokens'])} tokens · "
        f"cost {usd(row.cost)} · {num(row.failures)} failures</p></div>"
    )


def _point_cell(session_id: str, p: DecisionPoint | None) -> str:
    if p is None:
        return '<td class="point none">(nothing)</td>'
    value = p.value if isinstance(p.value, str) else orjson.dumps(p.value, default=str).decode()
    short = value if len(value) <= 160 else value[:159] + "…"
    href = session_url(session_id) + f"#v={p.version}"
    return (
        f'<td class="point" tabindex="0" data-session-id="{_e(session_id)}" '
        f'data-version="{p.version}"><span class="kind k-{_e(p.kind)}">{_e(p.kind)}</span> '
        f"<b>{_e(p.name)}</b> <span class=field>{_e(p.field)}</span> "
        f'<code>{_e(short)}</code> <a class="v" href="{_e(href)}" title="open in the timeline">'
        f"v{p.version}</a></td>"
    )


# --- stats ----------------------------------------------------------------------------


def stats_page(index: SessionIndex, store_name: str, otlp: dict[str, int] | None = None) -> str:
    """Tools, models, tokens, cost and sessions per day across the store (and OTLP in)."""
    st = index.stats()
    totals = [
        ("sessions", num(st["sessions"])),
        ("events", num(st["events"])),
        ("failed sessions", num(st["failed_sessions"])),
        ("LLM calls", num(st["llm_calls"])),
        ("tokens", num(st["total_tokens"])),
        ("input tokens", num(st["input_tokens"])),
        ("output tokens", num(st["output_tokens"])),
        ("cost", usd(st["cost_usd"])),
    ]
    boxes = "".join(
        f'<div class="total" data-total="{_e(k)}"><span class="k">{k}</span>'
        f'<span class="v">{v}</span></div>'
        for k, v in totals
    )
    tools = [
        [
            f'<a href="{_e(_url("/", {"tool": name}))}">{_e(name)}</a>',
            num(t["calls"]),
            num(t["failures"]),
            f"{t['failure_rate'] * 100:.1f}%",
            ms(t["p50_ms"]),
            ms(t["p95_ms"]),
            ms(t["mean_ms"]),
        ]
        for name, t in st["tools"].items()
    ]
    models = [
        [
            f'<a href="{_e(_url("/", {"model": name}))}">{_e(name)}</a>',
            num(m["calls"]),
            num(m["failures"]),
            num(m["input_tokens"]),
            num(m["output_tokens"]),
            num(m["total_tokens"]),
            usd(m["cost_usd"]),
        ]
        for name, m in st["models"].items()
    ]
    most = max((d["sessions"] for d in st["days"].values()), default=0) or 1
    days = [
        [
            f'<a href="{_e(_url("/", {"since": day, "until": day}))}">{_e(day)}</a>',
            f'<span class="bar" style="width:{d["sessions"] / most * 100:.1f}%"></span>'
            f"{num(d['sessions'])}",
            num(d["events"]),
            num(d["llm_calls"]),
            num(d["tokens"]),
            usd(d["cost_usd"]),
            num(d["failures"]),
        ]
        for day, d in reversed(st["days"].items())
    ]
    tables = [
        ("Tools", "tools", ["tool", "calls", "failures", "fail %", "p50", "p95", "mean"], tools),
        (
            "Models",
            "models",
            ["model", "calls", "failures", "input tokens", "output tokens", "total tokens", "cost"],
            models,
        ),
        (
            "Per day (UTC)",
            "days",
            ["day", "sessions", "events", "LLM calls", "tokens", "cost", "failures"],
            days,
        ),
    ]
    sections = "\n".join(
        f"<section><h2>{title}</h2>{_table(name, columns, rows)}</section>"
        for title, name, columns, rows in tables
    )
    main = f'<div class="totals">{boxes}</div>\n{sections}'
    if otlp is not None:
        main += (
            f'\n<p class="hint" id="otlp-counts">OTLP in since this server started: '
            f"{num(otlp['requests'])} requests, {num(otlp['spans'])} GenAI spans recorded as "
            f"{num(otlp['events'])} new events, {num(otlp['ignored_spans'])} other spans "
            "ignored.</p>"
        )
    return _layout("Stats", "stats", main, index, store_name, live=True)


def _table(name: str, columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th{' class=num' if i else ''}>{_e(c)}</th>" for i, c in enumerate(columns))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    if not rows:
        body = f'<tr class="empty"><td colspan="{len(columns)}">none yet</td></tr>'
    return (
        f'<table class="grid" id="{name}-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


# --- errors ----------------------------------------------------------------------------


def error_page(
    index: SessionIndex, store_name: str, title: str, message: str, near: Sequence[str] = ()
) -> str:
    """A 404 (with near matches) or 400 page."""
    hint = ""
    if near:
        links = "".join(f'<li><a href="{_e(session_url(sid))}">{_e(sid)}</a></li>' for sid in near)
        hint = f'<p>Did you mean:</p><ul class="near">{links}</ul>'
    main = (
        f'<div class="error-page"><h1>{_e(title)}</h1><p>{_e(message)}</p>{hint}'
        '<p><a href="/">all sessions</a></p></div>'
    )
    return _layout(title, "", main, index, store_name)
