"""Testing with agent_trace: recorded production sessions as pytest test cases.

The pytest plugin below is registered by the ``pytest11`` entry point
``agent_trace`` (pyproject.toml), so installing ``agent-trace`` is enough: no
conftest. Mark a test that takes ``recorded_session`` and it runs once per
selected session (test id = session id); the ``agent_replay`` fixture re-runs
the agent under ``agent_trace.replay`` and fails the test with the first
divergence, in words (``agent_trace.regression`` does the judging)::

    @pytest.mark.agent_trace_replay(store="sqlite:///prod-copy.db", select="since=7d,limit=50")
    def test_agent_still_behaves(recorded_session, agent_replay):
        answer = agent_replay(lambda s: MyAgent().answer(s.user_message))
        assert answer == recorded_session.final_response

Marker arguments: ``store`` (URL the recordings are read from; default: the
configured store), ``select`` (the filters of ``agent-trace test --select``,
as a string or a dict), ``mock`` (``("tool", "llm")`` by default; ``"tool"``
keeps the LLM live). The replays are recorded into the configured store
(``agent_trace.configure`` / ``AGENT_TRACE_STORE``); replays are never
selected as cases unless ``select`` says ``replays=include``.

The plugin only reads recordings; importing it imports nothing beyond
``agent_trace`` and pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from agent_trace.regression import (
    SessionResult,
    parse_mock,
    parse_selection,
    replay_and_judge,
    select_recordings,
)
from agent_trace.replay import RecordedSession, _run_sync, load_recording

__all__ = ["AgentReplay", "agent_replay", "recorded_session"]

# --- pytest plugin: replay recorded sessions as test cases -------------------------

MARKER = "agent_trace_replay"


@dataclass(frozen=True)
class _Options:
    store: Any
    select: Any
    mock: frozenset[str]


def _options(marker: pytest.Mark) -> _Options:
    unknown = set(marker.kwargs) - {"store", "select", "mock"}
    if marker.args or unknown:
        raise pytest.UsageError(
            f"@pytest.mark.{MARKER} takes store=, select= and mock= keywords only, "
            f"got {list(marker.args) + sorted(unknown)}"
        )
    try:
        select = parse_selection(marker.kwargs.get("select"))
        mock = parse_mock(marker.kwargs.get("mock", ("tool", "llm")))
    except ValueError as exc:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: {exc}") from None
    return _Options(marker.kwargs.get("store"), select, mock)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(store=None, select=None, mock=('tool', 'llm')): run the test once per "
        "recorded session (fixture recorded_session); agent_replay re-runs the agent on it",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "recorded_session" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return  # the fixture says what is missing when the test runs
    opts = _options(marker)
    try:
        ids = [r.session_id for r in _run_sync(lambda: select_recordings(opts.store, opts.select))]
    except (ValueError, ConnectionError, OSError) as exc:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: {exc}") from None
    if not ids:
        where = opts.store or "the configured store"
        pytest.fail(
            f"{metafunc.definition.nodeid}: no recorded sessions in {where} "
            f"match select={str(opts.select)!r}",
            pytrace=False,
        )
    metafunc.parametrize("recorded_session", ids, ids=ids, indirect=True)


@pytest.fixture
def recorded_session(request: pytest.FixtureRequest) -> RecordedSession:
    """The recorded session this test case replays (``user_message``, ``metadata``, ``events``)."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None or not hasattr(request, "param"):
        pytest.fail(
            f"recorded_session needs @pytest.mark.{MARKER}(store=..., select=...) on the test",
            pytrace=False,
        )
    store = _options(marker).store
    return _run_sync(lambda: load_recording(request.param, store=store))


class AgentReplay:
    """Runs the agent on the test's recorded session, under replay.

    ``agent_replay(agent)`` (blocking) or ``await agent_replay.run(agent)``:
    ``agent(recorded_session)`` runs with the marker's mocked kinds served from
    the recording and returns what the agent returned. A divergence fails the
    test with the session, the step, the recorded and the new call. The
    judged :class:`~agent_trace.regression.SessionResult` is kept in ``result``.
    """

    def __init__(self, recording: RecordedSession, mock: frozenset[str]) -> None:
        self.recording = recording
        self.mock = mock
        self.result: SessionResult | None = None

    async def run(
        self, agent: Callable[[RecordedSession], Any], *, mock: str | Iterable[str] | None = None
    ) -> Any:
        kinds = self.mock if mock is None else parse_mock(mock)
        return self._verdict(await replay_and_judge(agent, self.recording, kinds))

    def __call__(
        self, agent: Callable[[RecordedSession], Any], *, mock: str | Iterable[str] | None = None
    ) -> Any:
        kinds = self.mock if mock is None else parse_mock(mock)
        # Judged first, failed after: pytest.fail inside the loop runner would chain its
        # internals onto the failure message.
        return self._verdict(_run_sync(lambda: replay_and_judge(agent, self.recording, kinds)))

    def _verdict(self, result: SessionResult) -> Any:
        self.result = result
        if result.diverged:
            pytest.fail(result.explain(), pytrace=False)
        return result.output


@pytest.fixture
def agent_replay(request: pytest.FixtureRequest, recorded_session: RecordedSession) -> AgentReplay:
    """Re-run the agent on ``recorded_session`` under replay; fails the test on a divergence."""
    marker = request.node.get_closest_marker(MARKER)
    assert marker is not None  # recorded_session checked it
    return AgentReplay(recorded_session, _options(marker).mock)
