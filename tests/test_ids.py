"""Event ids: RFC 9562 UUIDv7, unique and increasing within the process."""

from __future__ import annotations

import threading
import time
import uuid

from agent_trace.events import uuid7, uuid7_many


def _check(ids: list[str]) -> None:
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text  # canonical lowercase 8-4-4-4-12 form
        assert u.version == 7 and u.variant == uuid.RFC_4122


def test_single_and_batched_ids_interleave_in_order() -> None:
    now = time.time_ns()
    ids = uuid7_many([now] * 5_000) + [uuid7() for _ in range(100)] + uuid7_many([now] * 10)
    _check(ids)
    assert uuid7_many([]) == []


def test_the_timestamp_field_is_the_millisecond_given() -> None:
    ns = 1_780_000_000_123_456_789
    (text,) = uuid7_many([ns])
    assert uuid.UUID(text).int >> 80 >= ns // 1_000_000


def test_random_bits_vary_in_every_position_of_the_tail() -> None:
    ids = uuid7_many([time.time_ns()] * 2_000)
    tails = [i[19:] for i in ids]  # variant char onward: "8xxx-xxxxxxxxxxxx"
    assert {t[0] for t in tails} == set("89ab")
    for pos in range(1, len(tails[0])):
        if tails[0][pos] != "-":
            assert len({t[pos] for t in tails}) > 8, pos


def test_threads_minting_at_once_never_collide() -> None:
    out: list[list[str]] = []

    def mint() -> None:
        out.append(uuid7_many([time.time_ns()] * 2_000) + [uuid7() for _ in range(200)])

    threads = [threading.Thread(target=mint) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in out for i in chunk]
    assert len(set(every)) == len(every) == 8_800
    for chunk in out:
        _check(chunk)
