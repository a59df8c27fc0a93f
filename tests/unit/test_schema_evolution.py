"""Schema evolution: every committed version of every schema in schemas/history/ stays readable
by the current schema (fastavro schema resolution), new fields come with defaults, and the event
schema is exactly the contract of ARCHITECTURE.md."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from icareus_bridge.codec import SCHEMA_FILES, SINGLE_OBJECT_MAGIC, SchemaSet, default_codec
from icareus_bridge.core.model import SubscriptionRecord

SCHEMAS = SchemaSet()
VERSIONS = [(name, v) for name, versions in SCHEMAS.history.items() for v in versions]


def sample(schema: Any, named: dict[str, Any]) -> Any:
    """A datum that exercises every field of `schema` (non-null branch of every union, one
    element in every array)."""
    if isinstance(schema, str):
        if schema in named:
            return sample(named[schema], named)
        return {
            "string": "x",
            "long": 7,
            "int": 3,
            "boolean": True,
            "null": None,
            "double": 1.5,
            "float": 0.5,
            "bytes": b"b",
        }[schema]
    if isinstance(schema, list):
        branch = next(s for s in schema if s != "null")
        return sample(branch, named)
    t = schema["type"]
    if t == "record":
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        return {f["name"]: sample(f["type"], named) for f in schema["fields"]}
    if t == "enum":
        named[schema["name"]] = schema
        return schema["symbols"][-1]
    if t == "array":
        return [sample(schema["items"], named)]
    if t == "map":
        return {"k": sample(schema["values"], named)}
    return sample(t, named)


@pytest.mark.parametrize(
    ("name", "version"), VERSIONS, ids=[f"{n}.v{v.version}" for n, v in VERSIONS]
)
def test_data_written_with_a_committed_version_is_read_by_the_current_schema(
    name: str, version: Any
) -> None:
    raw = json.loads(version.source)
    datum = sample(raw, {})
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(raw), datum)
    data = SINGLE_OBJECT_MAGIC + version.fingerprint + body.getvalue()
    decoded_name, obj = default_codec().decode(data)
    assert decoded_name == name
    current_fields = [f["name"] for f in json.loads(SCHEMAS.current[name].source)["fields"]]
    assert list(obj) == current_fields


@pytest.mark.parametrize("name", list(SCHEMA_FILES))
def test_the_current_schema_is_committed_as_the_latest_history_version(name: str) -> None:
    history = SCHEMAS.history[name]
    assert history, f"schemas/history/{SCHEMA_FILES[name]}.v1.avsc missing"
    assert history[-1].fingerprint == SCHEMAS.current[name].fingerprint, (
        f"schemas/{SCHEMA_FILES[name]}.avsc changed: add it as "
        f"schemas/history/{SCHEMA_FILES[name]}.v{history[-1].version + 1}.avsc"
    )


def _fields(schema: Any, path: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(schema, list):
        for s in schema:
            out.update(_fields(s, path))
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                out[f"{path}{schema['name']}.{f['name']}"] = f
                out.update(_fields(f["type"], f"{path}{schema['name']}."))
        elif schema.get("type") == "array":
            out.update(_fields(schema["items"], path))
    return out


@pytest.mark.parametrize("name", list(SCHEMA_FILES))
def test_fields_added_after_the_first_version_have_defaults(name: str) -> None:
    first = _fields(json.loads(SCHEMAS.history[name][0].source))
    current = _fields(json.loads(SCHEMAS.current[name].source))
    for key, f in current.items():
        if key not in first:
            assert "default" in f, f"{key} was added without a default"


def test_event_schema_is_exactly_the_contract() -> None:
    path = Path(SCHEMAS.directory) / "subscription_lifecycle_event.avsc"
    schema = json.loads(path.read_text())
    opt = {"type": ["null", "string"], "default": None}
    states = [
        "DRAFT",
        "EFFECTIVE",
        "NOT_EFFECTIVE",
        "IN_RESTING",
        "SHORT_TERM_EFFECTIVE",
        "SHORT_TERM_NOT_EFFECTIVE",
        "REGRETTED",
        "CANCELLED",
    ]
    assert (schema["name"], schema["namespace"]) == (
        "SubscriptionLifecycleEvent",
        "com.crm.provisioning.v1",
    )
    f = {x["name"]: x for x in schema["fields"]}
    assert list(f) == ["event_id", "occurred_at", "action", "subscription"]
    assert f["event_id"]["type"] == "string"
    assert f["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    action = f["action"]["type"]
    assert action["name"] == "Action"
    assert action["fields"] == [
        {"name": "code", "type": "string"},
        {"name": "classification", **opt},
    ]
    sub = f["subscription"]["type"]
    assert sub["name"] == "Subscription"
    sf = {x["name"]: x["type"] for x in sub["fields"]}
    assert list(sf) == [
        "id",
        "number",
        "version",
        "state",
        "subscriber",
        "services",
        "installed_items",
    ]
    assert (sf["id"], sf["number"], sf["version"]) == ("string", "string", "long")
    assert sf["state"] == {"type": "enum", "name": "SubscriptionState", "symbols": states}
    assert sf["subscriber"]["name"] == "Subscriber"
    assert sf["subscriber"]["fields"] == [
        {"name": "account_number", "type": "string"},
        {"name": "first_name", "type": "string"},
        {"name": "last_name", "type": "string"},
        *({"name": n, **opt} for n in ["email", "phone", "country_code", "postal_code", "city"]),
    ]
    service = sf["services"]["items"]
    assert sf["services"]["type"] == "array" and service["name"] == "Service"
    assert service["fields"] == [
        {"name": "id", "type": "string"},
        {"name": "product_code", "type": "string"},
        {
            "name": "state",
            "type": {
                "type": "enum",
                "name": "ServiceState",
                "symbols": [*states, "SWAPPED", "REMOVED"],
            },
        },
        {"name": "distributor", **opt},
    ]
    installed = sf["installed_items"]["items"]
    assert sf["installed_items"]["type"] == "array" and installed["name"] == "InstalledItem"
    assert installed["fields"] == [
        {"name": "id", "type": "string"},
        {"name": "serial_number", "type": "string"},
        {"name": "physical_good_code", "type": "string"},
        {"name": "distributor", **opt},
    ]


def test_the_state_record_embeds_the_same_subscription_as_the_event() -> None:
    event = json.loads(SCHEMAS.current["SubscriptionLifecycleEvent"].source)
    state = json.loads(SCHEMAS.current["SubscriptionRecord"].source)
    sub_in_event = next(f for f in event["fields"] if f["name"] == "subscription")["type"]
    snapshot = next(f for f in state["fields"] if f["name"] == "snapshot")["type"][1]
    assert snapshot == sub_in_event


def _v1_state(parked_behind: str | None) -> dict[str, Any]:
    return {
        "subscription_id": "sub-1",
        "subscription_number": "N1",
        "last_version": 4,
        "last_event_id": "ev-4",
        "snapshot": None,
        "accounts": [
            {
                "distributor": "VP1",
                "account_key": "N1-VP1",
                "registered": True,
                "registration_rejected": False,
                "user_id": "77",
                "products": ["2", "10"],
                "devices": [{"device_id": "SN1", "device_type": "SET_TOP_BOX"}],
            }
        ],
        "parked_behind": parked_behind,
    }


@pytest.mark.parametrize("parked_behind", [None, "req-1"])
def test_a_state_written_with_v1_and_its_parked_behind_is_read_without_it(
    parked_behind: str | None,
) -> None:
    v1 = SCHEMAS.history["SubscriptionRecord"][0]
    assert v1.version == 1
    body = io.BytesIO()
    raw = _v1_state(parked_behind)
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(v1.source)), raw)
    state = default_codec().decode_state(SINGLE_OBJECT_MAGIC + v1.fingerprint + body.getvalue())
    assert state is not None
    assert "parked_behind" not in state.model_dump()
    assert (state.subscription_id, state.last_version, state.last_event_id) == ("sub-1", 4, "ev-4")
    acc = state.accounts["VP1"]
    assert (acc.user_id, acc.products, acc.devices) == (
        "77",
        frozenset({"2", "10"}),
        {"SN1": "SET_TOP_BOX"},
    )


def test_a_new_state_is_written_with_the_current_version_and_without_parked_behind() -> None:
    current = SCHEMAS.history["SubscriptionRecord"][-1]
    assert current.version >= 2
    assert "parked_behind" not in [f["name"] for f in json.loads(current.source)["fields"]]
    state = SubscriptionRecord(subscription_id="sub-1", subscription_number="N1")
    data = default_codec().encode_state(state)
    assert data is not None and data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == current.fingerprint
    written = fastavro.schemaless_reader(
        io.BytesIO(data[10:]), fastavro.parse_schema(json.loads(current.source)), None
    )
    assert "parked_behind" not in written
    assert default_codec().decode_state(data) == state


def test_a_state_given_as_json_with_parked_behind_still_validates() -> None:
    # An `explain` output printed before the field was retired, passed back with --state.
    old = {**_v1_state("req-1"), "accounts": {}}
    state = SubscriptionRecord.model_validate(old)
    assert state == SubscriptionRecord.model_validate({**old, "parked_behind": None})
    assert "parked_behind" not in state.model_dump()
