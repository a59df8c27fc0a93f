"""`icareus-bridge explain`: the example events print the expected plans, a story replays step
by step through --state, and bad input exits 2 naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icareus_bridge.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STORY = ["01_new_subscription_two_boxes", "02_swap_service", "03_terminate"]


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict | None, str]:  # type: ignore[type-arg]
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("name", ["01_new_subscription_two_boxes", "04_five_rooms_fifth_rejected"])
def test_example_event_prints_the_expected_plan(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, _ = explain(capsys, "--event", str(EXAMPLES / f"{name}.json"))
    assert code == 0
    assert out == json.loads((EXAMPLES / "expected" / f"{name}.out.json").read_text())


def test_story_replays_step_by_step_with_state_from_the_previous_step(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state_args: list[str] = []
    for step in STORY:
        code, out, _ = explain(capsys, "--event", str(EXAMPLES / f"{step}.json"), *state_args)
        assert code == 0
        assert out == json.loads((EXAMPLES / "expected" / f"{step}.out.json").read_text())
        assert out is not None
        state_file = tmp_path / f"{step}.state.json"
        state_file.write_text(json.dumps(out["state"]))
        state_args = ["--state", str(state_file)]


def test_output_has_exactly_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = explain(capsys, "--event", str(EXAMPLES / "02_swap_service.json"))
    assert out is not None
    assert list(out) == ["requests", "rejections", "state"]
    assert all(list(r) == ["type", "distributor", "account_key", "params"] for r in out["requests"])


def test_swap_service_from_the_first_step_cancels_sports_and_activates_movies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = explain(
        capsys,
        "--event",
        str(EXAMPLES / "02_swap_service.json"),
        "--state",
        str(EXAMPLES / "expected" / "01_new_subscription_two_boxes.out.json"),
    )
    assert out is not None
    assert [(r["type"], r["params"]["product_ids"]) for r in out["requests"]] == [
        ("CANCEL_PRODUCTS", ["1002"]),
        ("ACTIVATE_PRODUCTS", ["1003"]),
    ]


def test_repeated_event_prints_nothing_planned_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = explain(
        capsys,
        "--event",
        str(EXAMPLES / "01_new_subscription_two_boxes.json"),
        "--state",
        str(EXAMPLES / "expected" / "01_new_subscription_two_boxes.out.json"),
    )
    assert code == 0 and out is not None and out["requests"] == []
    assert "DUPLICATE_EVENT" in err


def test_bad_json_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"event_id": ')
    code, out, err = explain(capsys, "--event", str(bad))
    assert code == 2 and out is None
    assert "not valid JSON" in err


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("subscription", "version"), "seven", "subscription.version"),
        (("subscription", "state"), "HALF_ACTIVE", "subscription.state"),
        (("action", "code"), "TELEPORT", "action.code"),
        (("subscription", "subscriber", "first_name"), None, "subscription.subscriber.first_name"),
    ],
)
def test_a_field_that_breaks_the_schema_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    path: tuple[str, ...],
    value: object,
    field: str,
) -> None:
    ev = json.loads((EXAMPLES / "01_new_subscription_two_boxes.json").read_text())
    node = ev
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(ev))
    code, out, err = explain(capsys, "--event", str(bad))
    assert code == 2 and out is None
    assert f"field {field}" in err


def test_a_missing_field_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ev = json.loads((EXAMPLES / "01_new_subscription_two_boxes.json").read_text())
    del ev["subscription"]["number"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(ev))
    code, _, err = explain(capsys, "--event", str(bad))
    assert code == 2 and "field subscription.number" in err


def test_a_broken_state_file_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = json.loads(
        (EXAMPLES / "expected" / "01_new_subscription_two_boxes.out.json").read_text()
    )
    state["state"]["last_version"] = "latest"
    bad = tmp_path / "state.json"
    bad.write_text(json.dumps(state["state"]))
    code, _, err = explain(
        capsys, "--event", str(EXAMPLES / "02_swap_service.json"), "--state", str(bad)
    )
    assert code == 2 and "last_version" in err
