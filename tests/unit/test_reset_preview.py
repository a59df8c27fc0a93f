"""The pieces of `icareus-bridge reset` that need no broker: the reset event built from the
last snapshot, the refusal of a parked key, the dry run's plan (the dispatcher's own
composition of `observed_state` and `plan`) and how it is shown, the rate limit, the progress
lines, and the flags."""

from __future__ import annotations

import io

import pytest

from icareus_bridge.cli import main as cli_main
from icareus_bridge.config import Settings
from icareus_bridge.core.model import AccountState
from icareus_bridge.core.plan import plan
from icareus_bridge.ops.reset import (
    Preview,
    Progress,
    RateLimit,
    plan_reset,
    print_preview,
    refusal,
    render_preview,
    reset_event,
)
from icareus_bridge.ops.state_lookup import KnownState
from icareus_bridge.pipeline.parking import ParkedKey
from tests.unit.crm_events import SUB_ID, SUB_NUMBER, event, item, provider, subscription, svc

SETTINGS = Settings(provider=provider(), icareus={"key": "unit-key"})
PERSONAL = ("Maria", "Georgiou", "maria@example.org", "+35799000000", "Nicosia", "1010")


def known(parked: ParkedKey | None = None, *, with_snapshot: bool = True) -> KnownState:
    sub = subscription(
        3,
        services=[
            svc("s1", "BASIC-TV", "VP1"),
            svc("s2", "SPORTS", "VP1"),
            svc("s3", "KIDS", "VP2"),
        ],
        items=[item("i1", "SN-1", distributor="VP1")],
    )
    state = plan(None, event("BECOME_SUBSCRIBER", sub), SETTINGS.provider).state
    if not with_snapshot:
        state = state.model_copy(update={"snapshot": None})
    return KnownState(state, partition=1, offset=42, timestamp_ms=1_764_000_100_000, parked=parked)


def holding(
    distributor: str, user: str, products: set[str], devices: dict[str, str]
) -> AccountState:
    return AccountState(
        distributor=distributor,
        account_key=f"{SUB_NUMBER}-{distributor}",
        registered=True,
        user_id=user,
        products=frozenset(products),
        devices=devices,
    )


def test_the_reset_event_is_the_last_snapshot_at_its_version_with_a_new_event_id() -> None:
    k = known()

    ev = reset_event(k, now_ms=5, event_id="e-new")

    assert ev.action.code == "RESET_SUBSCRIPTION"
    assert ev.event_id == "e-new" and ev.occurred_at == 5
    assert ev.subscription == k.record.snapshot
    assert ev.subscription.version == k.record.last_version == 3
    # The planner accepts it at the same version (a reset re-reads on purpose).
    assert plan(k.record, ev, SETTINGS.provider).skipped is None


def test_a_parked_subscription_is_refused_naming_the_request_and_replay() -> None:
    parked = ParkedKey(SUB_ID, parked_behind="req-7", partition=1, parked_at=1)

    why = refusal(known(parked))

    assert why is not None and "req-7" in why and f"replay --subscription {SUB_ID}" in why
    assert refusal(known()) is None
    assert "no CRM snapshot" in (refusal(known(with_snapshot=False)) or "")


def test_the_dry_run_plans_the_difference_between_icareus_and_the_snapshot() -> None:
    k = known()
    ev = reset_event(k, now_ms=5, event_id="e-dry")
    observed = {
        # The living room lost SPORTS and its box; the bedroom holds a product CRM never sold.
        "VP1": holding("VP1", "100001", {"1001"}, {}),
        "VP2": holding("VP2", "100002", {"1004", "1003"}, {}),
    }

    decision = plan_reset(ev, observed.values(), SETTINGS)
    view = render_preview(Preview(k, observed, decision))

    assert [(r["type"], r["account_key"], r["params"]) for r in view["requests"]] == [
        (
            "ADD_DEVICE",
            f"{SUB_NUMBER}-VP1",
            {"user_id": "100001", "device_id": "SN-1", "device_type": "SET_TOP_BOX"},
        ),
        ("CANCEL_PRODUCTS", f"{SUB_NUMBER}-VP2", {"user_id": "100002", "product_ids": ["1003"]}),
        ("ACTIVATE_PRODUCTS", f"{SUB_NUMBER}-VP1", {"user_id": "100001", "product_ids": ["1002"]}),
    ]
    vp1 = view["accounts"][0]
    assert vp1["icareus_holds"] == {"user_id": "100001", "products": ["1001"], "devices": []}
    assert vp1["should_hold"]["products"] == ["1001", "1002"]
    assert view["in_line"] is False


def test_an_account_icareus_lost_is_registered_again_without_showing_the_profile() -> None:
    k = known()
    ev = reset_event(k, now_ms=5, event_id="e-lost")
    observed = {"VP2": holding("VP2", "100002", {"1004"}, {})}

    view = render_preview(Preview(k, observed, plan_reset(ev, observed.values(), SETTINGS)))

    add_user = view["requests"][0]
    assert add_user["type"] == "ADD_USER"
    assert add_user["params"] == {"external_id": f"{SUB_NUMBER}-VP1"}
    assert view["accounts"][0]["icareus_holds"] is None
    out = io.StringIO()
    print_preview(view, out)
    text = out.getvalue()
    assert "icareus holds : no user" in text and "1. ADD_USER" in text
    assert not any(p in text for p in PERSONAL)


def test_a_subscription_in_line_is_shown_as_such() -> None:
    k = known()
    ev = reset_event(k, now_ms=5, event_id="e-ok")
    observed = {d: a.model_copy(update={"user_id": f"u-{d}"}) for d, a in k.record.accounts.items()}

    view = render_preview(Preview(k, observed, plan_reset(ev, observed.values(), SETTINGS)))
    out = io.StringIO()
    print_preview(view, out)

    assert view["in_line"] is True and view["requests"] == []
    assert "in line with CRM: a reset would send nothing" in out.getvalue()


def test_the_rate_limit_spaces_items_evenly() -> None:
    limit = RateLimit(4.0)

    delays = [limit.delay() for _ in range(4)]

    assert delays[0] == 0.0
    assert delays[1:] == pytest.approx([0.25, 0.5, 0.75], abs=0.05)
    assert RateLimit(None).delay() == 0.0


def test_progress_without_a_terminal_prints_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(3, "reset", tty=False)
    for _ in range(3):
        progress.advance("(0 refused)")
    progress.close()

    err = capsys.readouterr().err.splitlines()
    assert err[0] == "reset: 1/3 subscriptions (33%) (0 refused)"
    assert err[-1] == "reset: 3/3 subscriptions (100%) (0 refused)"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["reset"], "--subscription"),
        (["reset", "--all", "--subscription", "x"], "--subscription"),
        (["reset", "--all", "--rate", "0"], "--rate"),
        (["reset", "--all", "--rate", "soon"], "--rate"),
        (["status"], "--subscription"),
        (["status", "--subscription", "x", "--results", "-1"], "--results"),
    ],
)
def test_bad_flags_exit_2_naming_the_argument(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(args)

    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_progress_on_a_terminal_draws_a_rich_bar(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(2, "reset", tty=True)
    progress.advance("(0 refused)")
    progress.advance("(1 refused)")
    progress.close()

    err = capsys.readouterr().err
    assert "reset (1 refused)" in err and "2/2" in err
