"""Nonsense CRM events are refused at validation, never planned: the planner dead-letters them
(stage validate, reason INVALID, a message naming the field) and `explain` exits 2 saying why.
The limits of one event come from the `limits` configuration section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from icareus_bridge.cli import main
from icareus_bridge.codec import Codec, DecodeError, DecodeReason
from icareus_bridge.config import LimitSettings, Settings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import (
    INT64_MAX,
    Action,
    InstalledItem,
    LifecycleEvent,
    ModelError,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.core.validation import check_event
from icareus_bridge.kafka.consumer import ConsumedRecord
from icareus_bridge.pipeline.planner import Handled, PlannerLogic

CODEC = Codec()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FIRST_EXAMPLE = EXAMPLES / "01_new_subscription_two_boxes.json"
SETTINGS = Settings(
    icareus={"key": "k"},
    provider={
        "distributors": [{"code": "VP1"}, {"code": "VP2"}],
        "service_mapping": {"TV": "1001"},
        "physical_goods_mapping": {"STB": "SET_TOP_BOX"},
    },
)


def box(n: int, distributor: str = "VP1", serial: str | None = None) -> InstalledItem:
    return InstalledItem(
        id=f"ii-{n}",
        serial_number=serial if serial is not None else f"SN-{n}",
        physical_good_code="STB",
        distributor=distributor,
    )


def tv(n: int) -> Service:
    return Service(id=f"s{n}", product_code="TV", state=ServiceState.EFFECTIVE, distributor="VP1")


def become_subscriber(
    *,
    number: str = "N1",
    items: tuple[InstalledItem, ...] = (box(1),),
    services: tuple[Service, ...] = (tv(1),),
    first_name: str = "Ann",
    version: int = 1,
) -> LifecycleEvent:
    return LifecycleEvent(
        event_id="e1",
        occurred_at=1_790_000_000_000,
        action=Action(code="BECOME_SUBSCRIBER"),
        subscription=Subscription(
            id="sub-1",
            number=number,
            version=version,
            state=SubscriptionState.EFFECTIVE,
            subscriber=Subscriber(account_number="A", first_name=first_name, last_name="Lee"),
            services=services,
            installed_items=items,
        ),
    )


def planner(settings: Settings = SETTINGS) -> PlannerLogic:
    return PlannerLogic(settings, CODEC, plan, apply_result, clock_ms=lambda: 1_795_000_000_000)


def on_event(value: bytes, settings: Settings = SETTINGS) -> Handled:
    rec = ConsumedRecord(
        settings.topics.input, 0, 5, b"sub-1", value, timestamp_ms=1_790_000_000_001
    )
    return planner(settings).on_event(rec, lambda p, k: None)


def refused(value: bytes, settings: Settings = SETTINGS) -> str:
    """The planner's dead letter of one record: its error message (the field comes first)."""
    handled = on_event(value, settings)
    assert handled.outcome == "dead_lettered", (handled.outcome, handled.request_types)
    assert handled.dead_letter == ("validate", "INVALID")
    [dead] = handled.outputs
    assert (dead.topic, dead.value) == (settings.topics.dlq, value)  # the original bytes
    headers = dict(dead.headers or [])
    return headers["dlq.error.message"].decode()


# --- the planner refuses nonsense --------------------------------------------------------------


def test_an_empty_subscription_number_is_refused_instead_of_account_key_dash_vp1() -> None:
    message = refused(CODEC.encode_event(become_subscriber(number="")))
    assert message.startswith("subscription.number: must not be empty")


def test_an_empty_serial_number_is_refused_instead_of_add_device_of_nothing() -> None:
    message = refused(CODEC.encode_event(become_subscriber(items=(box(1, serial=""),))))
    assert message.startswith("subscription.installed_items.0.serial_number:")


def test_one_serial_number_in_two_rooms_is_refused_instead_of_two_add_devices() -> None:
    items = (box(1, "VP1", serial="SN-X"), box(2, "VP2", serial="SN-X"))
    message = refused(CODEC.encode_event(become_subscriber(items=items)))
    assert message.startswith("subscription.installed_items.1.serial_number:")
    assert "SN-X" in message and "ii-1" in message and "ii-2" in message


def test_ten_thousand_installed_items_are_refused_instead_of_ten_thousand_requests() -> None:
    items = tuple(box(n) for n in range(10_000))
    message = refused(CODEC.encode_event(become_subscriber(items=items)))
    assert message.startswith("subscription.installed_items: 10000 installed items")
    assert "limits.max_installed_items (50)" in message


def test_too_many_services_are_refused() -> None:
    services = tuple(tv(n) for n in range(201))
    message = refused(CODEC.encode_event(become_subscriber(services=services)))
    assert message.startswith("subscription.services: 201 services")


def test_a_five_megabyte_name_is_refused_without_echoing_it() -> None:
    name = "Ann" + "x" * 5_000_000
    value = CODEC.encode_event(become_subscriber(first_name=name))
    message = refused(value)
    assert "limits.max_event_bytes (1048576)" in message
    # Under a larger event limit the string limit names the field; the name never appears.
    roomy = SETTINGS.model_copy(update={"limits": LimitSettings(max_event_bytes=10_000_000)})
    handled = on_event(value, roomy)
    [dead] = handled.outputs
    headers = dict(dead.headers or [])
    text = b"".join(v for k, v in headers.items() if k != "dlq.original.timestamp")
    assert headers["dlq.error.message"].startswith(b"subscription.subscriber.first_name: 5000003 ")
    assert b"Annxxx" not in text


def test_the_limits_are_configurable() -> None:
    two = SETTINGS.model_copy(update={"limits": LimitSettings(max_installed_items=2)})
    event = CODEC.encode_event(become_subscriber(items=(box(1), box(2), box(3))))
    assert refused(event, two).startswith("subscription.installed_items: 3 installed items")
    assert on_event(event).outcome == "planned"  # within the default limits


def test_the_limits_have_sane_defaults_in_the_shipped_config() -> None:
    shipped = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "config" / "bridge.yaml").read_text()
    )
    assert LimitSettings(**shipped["limits"]) == LimitSettings()


def test_a_version_beyond_int64_is_never_planned() -> None:
    # An Avro long of 2^63 (a 10-byte varint): whatever the reader makes of it, no plan may
    # carry a version outside int64.
    sentinel = 123_456_789
    value = CODEC.encode_event(become_subscriber(version=sentinel))
    old = _varint(2 * sentinel)
    assert value.count(old) == 1
    handled = on_event(value.replace(old, _varint(2 * 2**63)))
    if handled.outcome == "dead_lettered":
        assert handled.dead_letter is not None and handled.dead_letter[1] in {
            "INVALID",
            "MALFORMED",
        }
    else:
        assert handled.state is not None
        assert handled.state.record.last_version <= INT64_MAX


def test_an_event_built_without_validation_is_still_checked_for_int64() -> None:
    # The compiled reader builds models without validation, as a constructor or a copy does.
    good = become_subscriber()
    sub = good.subscription.model_copy(update={"version": 2**63})
    event = good.model_copy(update={"subscription": sub})
    with pytest.raises(DecodeError) as failed:
        check_event(event, LimitSettings())
    assert failed.value.reason is DecodeReason.INVALID
    assert failed.value.field == "subscription.version"


def test_a_negative_version_is_refused() -> None:
    message = refused(CODEC.encode_event(become_subscriber(version=-1)))
    assert message.startswith("subscription.version: -1 is negative")


def test_a_valid_event_passes_unchanged() -> None:
    event = become_subscriber(items=(box(1), box(2, "VP2")))
    assert check_event(event, LimitSettings()) is event
    assert on_event(CODEC.encode_event(event)).outcome == "planned"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


# --- the models refuse longs outside int64 -----------------------------------------------------


def test_a_state_version_of_two_to_the_63_is_not_accepted() -> None:
    with pytest.raises(ModelError, match="last_version"):
        SubscriptionRecord.model_validate({"subscription_id": "sub-1", "last_version": 2**63})
    assert SubscriptionRecord(subscription_id="s", last_version=INT64_MAX).last_version == INT64_MAX


def test_plan_refuses_the_state_of_another_subscription() -> None:
    other = SubscriptionRecord(subscription_id="sub-2", subscription_number="N2")
    with pytest.raises(ValueError, match="sub-2"):
        plan(other, become_subscriber(), SETTINGS.provider)


# --- explain refuses nonsense with exit 2 ------------------------------------------------------


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def example(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(FIRST_EXAMPLE.read_text())
    event["subscription"].update(changes)
    return event


def write(tmp_path: Path, obj: Any, name: str = "event.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"number": ""}, "subscription.number"),
        ({"version": 2**63}, "subscription.version"),
        (
            {
                "installed_items": [
                    {**example()["subscription"]["installed_items"][0], "serial_number": ""}
                ]
            },
            "subscription.installed_items.0.serial_number",
        ),
        (
            {
                "installed_items": [
                    example()["subscription"]["installed_items"][0],
                    {
                        **example()["subscription"]["installed_items"][2],
                        "serial_number": "SN-LR-0001",
                    },
                ]
            },
            "subscription.installed_items.1.serial_number",
        ),
        (
            {
                "installed_items": [
                    {
                        **example()["subscription"]["installed_items"][0],
                        "id": f"I{n}",
                        "serial_number": f"S{n}",
                    }
                    for n in range(10_000)
                ]
            },
            "subscription.installed_items",
        ),
    ],
    ids=["empty-number", "version-2^63", "empty-serial", "serial-in-two-rooms", "10000-items"],
)
def test_explain_refuses_nonsense_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    code, out, err = explain(capsys, "--event", write(tmp_path, example(**changes)))
    assert (code, out) == (2, "")
    assert f"--event {tmp_path / 'event.json'}: field {field}" in err


def test_explain_refuses_a_five_megabyte_name_without_printing_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    event = example()
    event["subscription"]["subscriber"]["first_name"] = "Eleni" + "x" * 5_000_000
    code, out, err = explain(capsys, "--event", write(tmp_path, event))
    assert (code, out) == (2, "")
    assert "field subscription.subscriber.first_name: 5000005 characters" in err
    assert "Elenixx" not in err and len(err) < 1000


def test_explain_refuses_occurred_at_beyond_int64(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    event = example()
    event["occurred_at"] = 2**63
    code, _, err = explain(capsys, "--event", write(tmp_path, event))
    assert code == 2 and "field occurred_at" in err


def test_explain_refuses_the_state_of_another_subscription(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expected = json.loads(
        (EXAMPLES / "expected" / "01_new_subscription_two_boxes.out.json").read_text()
    )
    expected["state"]["subscription_id"] = "someone-else"
    state = write(tmp_path, expected["state"], "state.json")
    code, out, err = explain(
        capsys, "--event", str(EXAMPLES / "02_swap_service.json"), "--state", state
    )
    assert (code, out) == (2, "")
    assert "--state" in err and "someone-else" in err


def test_explain_refuses_a_state_version_beyond_int64(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expected = json.loads(
        (EXAMPLES / "expected" / "01_new_subscription_two_boxes.out.json").read_text()
    )
    expected["state"]["last_version"] = 2**63
    state = write(tmp_path, expected["state"], "state.json")
    code, _, err = explain(
        capsys, "--event", str(EXAMPLES / "02_swap_service.json"), "--state", state
    )
    assert code == 2 and "--state" in err and "last_version" in err


@pytest.mark.parametrize("option", ["--event", "--state"])
def test_explain_says_a_file_is_not_utf8_instead_of_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str
) -> None:
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(FIRST_EXAMPLE.read_text().replace("Eleni", "Elén\u00ed").encode("latin-1"))
    files = {"--event": str(FIRST_EXAMPLE), "--state": None}
    files[option] = str(latin1)
    args = [arg for name, path in files.items() if path is not None for arg in (name, path)]
    code, out, err = explain(capsys, *args)
    assert (code, out) == (2, "")
    assert f"{option}: {latin1} is not UTF-8 text" in err


def test_explain_applies_the_limits_of_its_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "config" / "bridge.yaml").read_text()
    )
    config["limits"]["max_event_bytes"] = 200  # the example's Avro encoding is larger
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = explain(capsys, "--event", str(FIRST_EXAMPLE), "--config", str(path))
    assert (code, out) == (2, "")
    assert "more than limits.max_event_bytes (200)" in err


def test_explain_applies_a_limit_set_in_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__LIMITS__MAX_SERVICES", "3")
    code, _, err = explain(capsys, "--event", str(FIRST_EXAMPLE))  # it has 4 services
    assert code == 2
    assert "field subscription.services: 4 services, more than limits.max_services (3)" in err
