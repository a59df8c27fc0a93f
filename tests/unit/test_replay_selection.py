"""What `replay` chooses, without Kafka: filters (AND), order per subscription, the parked-key
chain, the loop guard, stages that need --force, the ledger and --limit; and the operator's view."""

from __future__ import annotations

import argparse

import pytest

from icareus_bridge.cli import build_parser
from icareus_bridge.ops import replay_model as rm
from icareus_bridge.ops.replay import UsageError, filters_of, render_dead_letter
from icareus_bridge.pipeline.dead_letter import (
    Origin,
    dead_letter_headers,
    iso_millis,
    parse_dead_letter_headers,
    parse_iso_millis,
)

T0 = parse_iso_millis("2026-11-26T10:00:00Z")
REQUESTS = "icareus.provisioning.requests.v1"
INPUT = "crm.subscription.lifecycle.v1"


def dead(
    offset: int,
    sub: str,
    request_id: str | None,
    *,
    partition: int = 0,
    stage: str = "dispatch",
    reason: str = "RETRIES_EXHAUSTED",
    behind: str | None = None,
    replays: int = 0,
    at: int = T0,
    topic: str = REQUESTS,
) -> rm.DeadLetter:
    headers = dead_letter_headers(
        stage,  # type: ignore[arg-type]
        reason,
        "connect error to Icareus",
        Origin(topic, 1, 100 + offset, at - 5000),
        "icareus-bridge-dispatcher",
        now_ms=at,
        attempts=4,
        first_failure_at=at - 3000,
        last_failure_at=at,
        http_status=503,
        replay_count=replays,
        parked_behind=behind,
    )
    return rm.DeadLetter(
        partition=partition,
        offset=offset,
        key=sub.encode(),
        value=b"\xc3\x01payload",
        headers=parse_dead_letter_headers(headers),
        request_id=request_id,
        request_type="ACTIVATE_PRODUCTS" if request_id else None,
        event_id=None if request_id else f"ev-{offset}",
    )


def chain(sub: str, start: int, n: int, *, partition: int = 0) -> list[rm.DeadLetter]:
    """A parked key: the request that gave up, then `n - 1` parked behind it."""
    first = dead(start, sub, f"{sub}-r0", partition=partition)
    rest = [
        dead(
            start + i,
            sub,
            f"{sub}-r{i}",
            partition=partition,
            reason="PARKED",
            behind=first.request_id,
        )
        for i in range(1, n)
    ]
    return [first, *rest]


def refs(items: list[rm.DeadLetter]) -> list[str]:
    return [d.ref for d in items]


def choose(items: list[rm.DeadLetter], **kw: object) -> rm.Selection:
    filters = kw.pop("filters", rm.Filters())
    replayed = kw.pop("replayed", set())
    return rm.select(items, replayed, filters, max_replays=3, **kw)  # type: ignore[arg-type]


def test_everything_goes_back_in_dlq_order_when_nothing_is_filtered() -> None:
    items = chain("A", 0, 3) + chain("B", 3, 2)
    sel = choose(list(reversed(items)))

    assert refs(sel.replay) == refs(items)
    assert sel.refused == [] and sel.not_matched == 0


def test_filters_combine_with_and() -> None:
    a = dead(0, "A", "a0", at=T0)
    b = dead(1, "B", "b0", at=T0 + 60_000)
    c = dead(2, "B", "b1", at=T0 + 120_000, reason="DISPATCH_FAILED")
    only_b_late = rm.Filters(subscription="B", since_ms=T0 + 60_000, reason="RETRIES_EXHAUSTED")

    sel = choose([a, b, c], filters=only_b_late)

    assert refs(sel.replay) == [b.ref]
    assert sel.not_matched == 2


def test_since_is_inclusive_until_exclusive_on_the_last_failure_time() -> None:
    items = [dead(i, f"S{i}", f"r{i}", at=T0 + i * 1000) for i in range(4)]

    sel = choose(items, filters=rm.Filters(since_ms=T0 + 1000, until_ms=T0 + 3000))

    assert refs(sel.replay) == ["0@1", "0@2"]


def test_request_id_filter_matches_a_request_or_an_event_id() -> None:
    items = [dead(0, "A", "a0"), dead(1, "B", None, stage="plan", reason="PLAN_FAILED")]

    assert refs(choose(items, filters=rm.Filters(request_id="a0")).replay) == ["0@0"]
    assert refs(choose(items, filters=rm.Filters(request_id="ev-1")).replay) == ["0@1"]
    assert choose(items, filters=rm.Filters(request_id="nope")).replay == []


def test_the_ledger_skips_what_an_earlier_run_replayed() -> None:
    items = chain("A", 0, 3)

    sel = choose(items, replayed={"0@0", "0@1"})

    assert refs(sel.replay) == ["0@2"]
    assert sel.already_replayed == 2


def test_loop_guard_refuses_at_max_replays_unless_forced() -> None:
    worn = dead(0, "A", "a0", replays=3)
    fresh = dead(1, "B", "b0", replays=2)

    sel = choose([worn, fresh])
    assert refs(sel.replay) == [fresh.ref]
    assert [(d.ref, why) for d, why in sel.refused] == [(worn.ref, rm.REFUSED_MAX_REPLAYS)]

    assert refs(choose([worn, fresh], force=True).replay) == [worn.ref, fresh.ref]


@pytest.mark.parametrize("stage", ["decode", "validate"])
def test_crm_bad_bytes_need_force(stage: str) -> None:
    bad = dead(0, "A", None, stage=stage, reason="NOT_AVRO", topic=INPUT)

    assert [why for _, why in choose([bad]).refused] == [rm.REFUSED_STAGE]
    assert refs(choose([bad], force=True).replay) == [bad.ref]


def test_a_dead_letter_without_origin_is_refused_even_with_force() -> None:
    d = dead(0, "A", "a0")
    del d.headers["dlq.original.topic"]

    assert [why for _, why in choose([d], force=True).refused] == [rm.REFUSED_NO_ORIGIN]


def test_an_original_topic_the_broker_does_not_have_is_refused() -> None:
    d = dead(0, "A", "a0")

    sel = choose([d], topics={INPUT: 3})

    assert [why for _, why in sel.refused] == [rm.REFUSED_NO_ORIGIN]


def test_parked_followers_are_refused_when_their_parker_stays_behind() -> None:
    items = chain("A", 0, 3)

    # Only the parked ones: the dispatcher would just park them again.
    sel = choose(items, filters=rm.Filters(reason="PARKED"))
    assert sel.replay == []
    assert {why for _, why in sel.refused} == {rm.REFUSED_PARKED_BEHIND}

    # The parker refused by the guard: its followers wait too.
    worn = [dead(0, "A", "A-r0", replays=3), *chain("A", 0, 3)[1:]]
    sel = choose(worn)
    assert [why for _, why in sel.refused] == [rm.REFUSED_MAX_REPLAYS] + [
        rm.REFUSED_PARKED_BEHIND
    ] * 2


def test_followers_of_an_already_replayed_parker_go_back() -> None:
    # The parker went back in an earlier run and completed: its key is unparked.
    items = chain("A", 0, 3)

    sel = choose(items, replayed={"0@0"}, filters=rm.Filters(reason="PARKED"))

    assert refs(sel.replay) == ["0@1", "0@2"]


def test_a_parker_that_failed_again_goes_before_the_followers_it_parks() -> None:
    # A (0@0) replayed, failed again: A' is at 0@5, after B and C parked behind A's request.
    first, b, c = chain("A", 0, 3)
    again = dead(5, "A", first.request_id, replays=1)
    other = dead(4, "Z", "z0")

    sel = choose([first, b, c, other, again], replayed={first.ref})

    of_a = [d for d in sel.replay if d.subscription_id == "A"]
    assert refs(of_a) == [again.ref, b.ref, c.ref]
    assert other.ref in refs(sel.replay)


def test_order_is_kept_per_subscription_across_dlq_partitions() -> None:
    a = chain("A", 0, 3, partition=1)
    b = chain("B", 0, 2, partition=0)

    order = refs(rm.replay_order(a + b))

    assert order == refs(b) + refs(a)


def test_limit_counts_replayed_and_parked_followers_wait_with_their_parker() -> None:
    items = chain("A", 0, 2) + chain("B", 2, 3)

    sel = choose(items, limit=2)

    assert refs(sel.replay) == ["0@0", "0@1"]
    assert sel.over_limit == 3 and sel.refused == []


def test_replayed_record_headers_count_up_and_name_the_dead_letter() -> None:
    d = dead(7, "A", "a0", partition=2, replays=1)

    headers = dict(d.replay_headers("run-1"))

    assert headers == {
        "dlq.replay.count": b"2",
        "dlq.replay.of": b"2@7",
        "dlq.replay.run": b"run-1",
    }


def test_the_view_has_what_the_operator_needs_and_no_value_bytes() -> None:
    d = dead(0, "A", "a0")

    v = d.view()
    text = render_dead_letter(v)

    assert v["subscription_id"] == "A" and v["request_id"] == "a0"
    assert v["stage"] == "dispatch" and v["reason"] == "RETRIES_EXHAUSTED"
    assert v["attempts"] == 4 and v["http_status"] == 503 and v["parks_key"] is True
    assert v["first_failure_at"] == iso_millis(T0 - 3000)
    assert v["last_failure_at"] == iso_millis(T0)
    assert "payload" not in str(v) and "payload" not in text
    assert "RETRIES_EXHAUSTED" in text and "connect error to Icareus" in text


def test_totals_by_stage_and_reason() -> None:
    items = [*chain("A", 0, 3), dead(3, "B", None, stage="decode", reason="NOT_AVRO")]

    t = rm.totals(d.view() for d in items)

    assert t == {
        "dead_letters": 4,
        "by_stage": {"decode": 1, "dispatch": 3},
        "by_reason": {
            "decode:NOT_AVRO": 1,
            "dispatch:PARKED": 2,
            "dispatch:RETRIES_EXHAUSTED": 1,
        },
    }


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["replay", *argv])


def test_times_are_parsed_and_a_bad_one_names_its_flag() -> None:
    f = filters_of(_args("--since", "2026-11-26T10:00:00Z", "--until", "2026-11-26T11:00:00+00:00"))
    assert (f.since_ms, f.until_ms) == (T0, T0 + 3_600_000)

    with pytest.raises(UsageError, match="--since"):
        filters_of(_args("--since", "yesterday"))
    with pytest.raises(UsageError, match="--until"):
        filters_of(_args("--since", "2026-11-26T10:00:00Z", "--until", "2026-11-26T09:00:00Z"))


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "inf"])
def test_a_bad_rate_is_a_usage_error_naming_rate(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _args("--rate", bad)

    assert exit_info.value.code == 2
    assert "--rate" in capsys.readouterr().err


def test_a_ledger_entry_counts_only_for_the_dead_letter_it_was_written_for() -> None:
    # The DLQ topic was deleted and created again: a new dead letter sits at the same ref.
    old = dead(0, "A", "a0", at=T0)
    new = dead(0, "B", "b0", at=T0 + 86_400_000)
    ledger = {old.ref: {"run_id": "r", "fp": old.fingerprint}}

    assert rm.replayed_refs([old], ledger) == {old.ref}
    assert rm.replayed_refs([new], ledger) == set()
    assert rm.replayed_refs([new], {new.ref: {"run_id": "r"}}) == {new.ref}  # no fingerprint
