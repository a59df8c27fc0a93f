"""Dead-letter headers: every `dlq.*` header of ARCHITECTURE.md, values as text, bounded size."""

from __future__ import annotations

from icareus_bridge.pipeline.dead_letter import (
    Origin,
    dead_letter_headers,
    iso_millis,
    parse_dead_letter_headers,
    parse_iso_millis,
    replay_count_of,
)

NOW = 1_795_000_000_123


def test_a_decode_failure_carries_where_it_came_from_and_why() -> None:
    headers = dead_letter_headers(
        "decode",
        "NOT_AVRO",
        ValueError("first bytes 7b22"),
        Origin("crm.subscription.lifecycle.v1", 4, 1234, 1_795_000_000_000),
        "icareus-bridge-planner",
        now_ms=NOW,
    )
    h = parse_dead_letter_headers(headers)
    assert h == {
        "dlq.stage": "decode",
        "dlq.reason": "NOT_AVRO",
        "dlq.error.class": "ValueError",
        "dlq.error.message": "first bytes 7b22",
        "dlq.original.topic": "crm.subscription.lifecycle.v1",
        "dlq.original.partition": "4",
        "dlq.original.offset": "1234",
        "dlq.original.timestamp": "2026-11-18T11:06:40.000Z",
        "dlq.consumer.group": "icareus-bridge-planner",
        "dlq.attempts": "1",
        "dlq.first.failure.at": iso_millis(NOW),
        "dlq.last.failure.at": iso_millis(NOW),
        "dlq.replay.count": "0",
    }
    assert all(isinstance(v, bytes) for _, v in headers)


def test_a_dispatch_failure_of_a_parked_key_says_what_parked_it() -> None:
    headers = dead_letter_headers(
        "dispatch",
        "PARKED",
        "subscription parked",
        Origin("icareus.provisioning.requests.v1", 0, 7),
        "icareus-bridge-dispatcher",
        now_ms=NOW,
        attempts=6,
        first_failure_at=NOW - 30_000,
        http_status=503,
        response_excerpt="é" * 2000,
        replay_count=2,
        parked_behind="req-1",
    )
    h = parse_dead_letter_headers(headers)
    assert h["dlq.parked.behind"] == "req-1"
    assert h["dlq.http.status"] == "503"
    assert h["dlq.attempts"] == "6"
    assert h["dlq.replay.count"] == "2"
    assert parse_iso_millis(h["dlq.first.failure.at"]) == NOW - 30_000
    assert h["dlq.error.class"] == ""
    assert "dlq.original.timestamp" not in h
    excerpt = dict(headers)["dlq.response.excerpt"]
    assert len(excerpt) <= 1024
    excerpt.decode("utf-8")  # cut on a character boundary


def test_a_replayed_record_keeps_counting_its_replays() -> None:
    assert replay_count_of([("dlq.replay.count", b"3")]) == 3
    assert replay_count_of([("other", b"x")]) == 0
    assert replay_count_of(None) == 0
    assert parse_iso_millis(iso_millis(NOW)) == NOW
