"""The compiled Avro writers write exactly the bytes fastavro writes, for every record the
bridge encodes (events, requests, results, state), so the codec can use them on its hot path."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from icareus_bridge.codec import Codec, state_to_avro
from icareus_bridge.codec.errors import UnsupportedSchema
from icareus_bridge.codec.writer import compile_writer
from icareus_bridge.config import Distributor, ProviderSettings
from icareus_bridge.core.feedback import apply_result, rejection_result
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
    LifecycleEvent,
    LifeCycleState,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
    plain,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.pipeline.outcomes import request_fields

PROVIDER = ProviderSettings(
    max_viewing_points=1,
    distributors=[Distributor(code="VP1"), Distributor(code="VP2")],
    service_mapping={"TV": "1001", "SPORTS": "1002"},
    physical_goods_mapping={"BOX": "SET_TOP_BOX"},
)


def _event(version: int, services: list[tuple[str, str]], items: list[str]) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=f"e{version}",
        occurred_at=1_790_000_000_000 + version,
        action=Action(code="ADD_SERVICE", classification="x" if version % 2 else None),
        subscription=Subscription(
            id="sub-ü",  # non-ASCII: lengths are in bytes
            number="N1",
            version=version,
            state=SubscriptionState.EFFECTIVE,
            subscriber=Subscriber(
                account_number="A1",
                first_name="Zoë",
                last_name="Lee",
                email="z@example.org",
                city=None,
            ),
            services=tuple(
                Service(id=f"s{i}", product_code=p, state=ServiceState.EFFECTIVE, distributor=d)
                for i, (p, d) in enumerate(services)
            ),
            installed_items=tuple(
                InstalledItem(
                    id=f"i{s}", serial_number=s, physical_good_code="BOX", distributor="VP1"
                )
                for s in items
            ),
        ),
    )


def _samples() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {
        "SubscriptionLifecycleEvent": [],
        "ProvisioningRequest": [],
        "ProvisioningResult": [],
        "SubscriptionRecord": [state_to_avro(SubscriptionRecord(subscription_id="empty"))],
    }
    state = None
    stories = [
        _event(1, [("TV", "VP1")], ["SN1"]),
        _event(2, [("TV", "VP1"), ("SPORTS", "VP1"), ("GOLF", "VP1"), ("TV", "VP2")], ["SN1"]),
        _event(3, [], ["S" * 200]),  # a string longer than 63 bytes: multi-byte length
    ]
    for ev in stories:
        d = plan(state, ev, PROVIDER)
        state = d.state
        out["SubscriptionLifecycleEvent"].append(ev.model_dump())
        out["ProvisioningRequest"] += [r.model_dump() for r in d.requests]
        for rej in d.rejections:
            result = rejection_result(rej, ev, executed_at=-5)
            out["ProvisioningResult"].append(result.model_dump())
            state = apply_result(state, result)
        out["SubscriptionRecord"].append(state_to_avro(state))
    req = plan(None, stories[0], PROVIDER).requests[0]
    out["ProvisioningResult"].append(
        ProvisioningResult(
            **request_fields(req),
            life_cycle_state=LifeCycleState.COMPLETED,
            reference_number="u-1",
            request_payload='{"a":1}',
            attempts=2**31 - 1,  # the largest Avro int
            executed_at=None,
        ).model_dump()
    )
    return out


@pytest.mark.parametrize("record", list(_samples()))
def test_compiled_writer_writes_the_bytes_fastavro_writes(record: str) -> None:
    codec = Codec()
    version = codec.schemas.current[record]
    write = compile_writer(json.loads(version.source))
    samples = _samples()[record]
    assert samples, record
    for obj in samples:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, version.parsed, plain(obj))  # fastavro: dicts only
        assert write(obj) == buf.getvalue()


def test_the_codec_encodes_with_the_compiled_writer_and_reads_it_back() -> None:
    codec = Codec()
    for obj in _samples()["SubscriptionRecord"]:
        record = codec.decode_state(codec.encode("SubscriptionRecord", obj))
        assert record is not None and record.subscription_id == obj["subscription_id"]


def test_unions_of_two_non_null_types_are_left_to_fastavro() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["int", "string"]}]}
    with pytest.raises(UnsupportedSchema):
        compile_writer(schema)


def test_models_are_written_as_their_model_dump_would_be() -> None:
    codec = Codec()
    state = None
    for ev in [
        _event(1, [("TV", "VP1")], ["SN1"]),
        _event(2, [("TV", "VP1"), ("GOLF", "VP1"), ("TV", "VP2")], []),
    ]:
        d = plan(state, ev, PROVIDER)
        state = d.state
        models: list[Any] = [ev, *d.requests]
        models += [rejection_result(r, ev, executed_at=1) for r in d.rejections]
        for model in models:
            name = type(model).__name__
            if name == "LifecycleEvent":
                name = "SubscriptionLifecycleEvent"
            version = codec.schemas.current[name]
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, version.parsed, model.model_dump())
            assert compile_writer(json.loads(version.source))(model) == buf.getvalue()
    assert codec.decode_request(codec.encode_request(d.requests[0])) == d.requests[0]
