"""The Avro codec: single-object encoding per the Avro specification, the Confluent registry
format against a real (tiny, in-process) registry over HTTP, and typed decode errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icareus_bridge.codec import (
    EVENT,
    Codec,
    DecodeError,
    DecodeReason,
    SchemaRegistryError,
    SchemaSet,
    default_codec,
    validate_event,
)
from icareus_bridge.codec.registry import SchemaRegistryClient
from icareus_bridge.core.feedback import rejection_result
from icareus_bridge.core.model import (
    ActionCode,
    LifecycleEvent,
    LifeCycleState,
    ProvisioningResult,
    ServiceState,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from tests.unit.crm_events import event, item, provider, subscription, svc

SUB = subscription(
    3,
    [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", "VP1")],
    [item("i", "SN1", "STB-4K", "VP1")],
)
EVENT_OBJ = event("ADD_SERVICE", SUB, classification="UPGRADE")


def rabin_fingerprint(text: str) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in text.encode("utf-8"):
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_event_round_trips_through_single_object_encoding() -> None:
    codec = default_codec()
    data = codec.encode_event(EVENT_OBJ)
    assert codec.decode_event(data) == EVENT_OBJ


def test_single_object_header_is_c3_01_and_the_little_endian_crc64_of_the_canonical_form() -> None:
    codec = default_codec()
    data = codec.encode_event(EVENT_OBJ)
    canonical = codec.schemas.current[EVENT].canonical
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == rabin_fingerprint(canonical).to_bytes(8, "little")
    assert canonical.startswith('{"name":"com.crm.provisioning.v1.SubscriptionLifecycleEvent"')


def test_requests_results_and_state_round_trip() -> None:
    codec = default_codec()
    decision = plan(None, EVENT_OBJ, provider())
    for r in decision.requests:
        assert codec.decode_request(codec.encode_request(r)) == r
    for j in decision.rejections:
        res = rejection_result(j, EVENT_OBJ)
        assert codec.decode_result(codec.encode_result(res)) == res
    done = ProvisioningResult(
        **{
            **res.model_dump(),
            "life_cycle_state": LifeCycleState.COMPLETED,
            "attempts": 2,
            "reference_number": "42",
            "response_payload": '{"status":"ok"}',
        }
    )
    assert codec.decode_result(codec.encode_result(done)) == done
    encoded = codec.encode_state(decision.state)
    assert encoded is not None
    assert codec.decode_state(encoded) == decision.state


def test_state_tombstone_is_none_both_ways() -> None:
    codec = default_codec()
    assert codec.encode_state(None) is None
    assert codec.decode_state(None) is None


def test_generic_decode_names_the_record() -> None:
    name, obj = default_codec().decode(default_codec().encode_event(EVENT_OBJ))
    assert name == "SubscriptionLifecycleEvent"
    assert obj["occurred_at"] == EVENT_OBJ.occurred_at  # epoch ms stays an int


@pytest.mark.parametrize("data", [b"", b'{"event_id": 1}', b"\xc3", b"\x00\x00\x00\x00\x01abc"])
def test_bytes_without_avro_framing_are_not_avro(data: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        default_codec().decode(data)
    assert err.value.reason is DecodeReason.NOT_AVRO and err.value.stage == "decode"


def test_an_unknown_fingerprint_is_an_unknown_schema() -> None:
    data = bytearray(default_codec().encode_event(EVENT_OBJ))
    data[5] ^= 0xFF
    with pytest.raises(DecodeError) as err:
        default_codec().decode(bytes(data))
    assert err.value.reason is DecodeReason.UNKNOWN_SCHEMA


@pytest.mark.parametrize("cut", [11, 30, -1])
def test_a_truncated_body_is_malformed(cut: int) -> None:
    data = default_codec().encode_event(EVENT_OBJ)
    with pytest.raises(DecodeError) as err:
        default_codec().decode(data[:cut])
    assert err.value.reason is DecodeReason.MALFORMED


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(DecodeError) as err:
        default_codec().decode(default_codec().encode_event(EVENT_OBJ) + b"\x00")
    assert err.value.reason is DecodeReason.MALFORMED


def test_an_unknown_action_code_is_invalid_and_names_the_field() -> None:
    bad = EVENT_OBJ.model_dump()
    bad["action"]["code"] = "TELEPORT_SUBSCRIPTION"
    data = default_codec().encode(EVENT, bad)
    with pytest.raises(DecodeError) as err:
        default_codec().decode_event(data)
    assert err.value.reason is DecodeReason.INVALID
    assert err.value.field == "action.code" and err.value.stage == "validate"


def test_validation_names_the_field_that_breaks_the_model() -> None:
    bad = EVENT_OBJ.model_dump()
    bad["subscription"]["services"][1]["state"] = "HALF_EFFECTIVE"
    with pytest.raises(DecodeError) as err:
        validate_event(bad)
    assert err.value.reason is DecodeReason.INVALID
    assert err.value.field == "subscription.services.1.state"


# --- Confluent wire format against a registry over HTTP -------------------------------------


class _FakeRegistry(BaseHTTPRequestHandler):
    schemas: ClassVar[list[tuple[str, str]]] = []  # (subject, schema); id = index + 1

    def _send(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = self.path.strip("/").split("/")
        subject = parts[1]
        for n, (subj, schema) in enumerate(self.schemas, 1):
            if schema == body["schema"] and subj == subject:
                self._send(200, {"id": n, "subject": subject, "version": 1})
                return
        if len(parts) == 3 and parts[2] == "versions":
            self.schemas.append((subject, body["schema"]))
            self._send(200, {"id": len(self.schemas)})
        else:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def do_GET(self) -> None:
        schema_id = int(self.path.rsplit("/", 1)[1])
        if 1 <= schema_id <= len(self.schemas):
            self._send(200, {"schema": self.schemas[schema_id - 1][1]})
        else:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    _FakeRegistry.schemas = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _registered_id(url: str, subject: str, schema: str) -> int | None:
    """The id of `schema` under `subject` if registered there (the registry's lookup call)."""
    resp = httpx.post(
        f"{url}/subjects/{subject}",
        content=json.dumps({"schema": schema}),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return int(resp.json()["id"])


def test_registry_format_registers_under_topic_value_and_round_trips(registry_url: str) -> None:
    client = SchemaRegistryClient(registry_url)
    codec = Codec(
        SchemaSet(), registry=client, subjects={EVENT: "crm.subscription.lifecycle.v1-value"}
    )
    data = codec.encode_event(EVENT_OBJ)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 1
    assert _FakeRegistry.schemas[0][0] == "crm.subscription.lifecycle.v1-value"
    subject, schema = _FakeRegistry.schemas[0]
    assert _registered_id(registry_url, subject, schema) == 1
    # a fresh reader (empty caches) fetches the writer schema by id
    reader = Codec(SchemaSet(), registry=SchemaRegistryClient(registry_url))
    assert reader.decode_event(data) == EVENT_OBJ
    # and still reads single-object encoded bytes
    assert reader.decode_event(default_codec().encode_event(EVENT_OBJ)) == EVENT_OBJ


def test_registry_id_unknown_to_the_registry_is_an_unknown_schema(registry_url: str) -> None:
    codec = Codec(SchemaSet(), registry=SchemaRegistryClient(registry_url))
    with pytest.raises(DecodeError) as err:
        codec.decode(b"\x00\x00\x00\x00\x09\x02")
    assert err.value.reason is DecodeReason.UNKNOWN_SCHEMA


def test_registry_unreachable_is_not_the_inputs_fault() -> None:
    codec = Codec(
        SchemaSet(), registry=SchemaRegistryClient("http://127.0.0.1:9", timeout_seconds=0.5)
    )
    with pytest.raises(SchemaRegistryError):
        codec.encode_event(EVENT_OBJ)
    with pytest.raises(SchemaRegistryError):
        codec.decode(b"\x00\x00\x00\x00\x01\x02")


# --- the compiled reader of the current event schema ----------------------------------------

_events = st.builds(
    lambda sub, code, cls, at: event(code, sub, classification=cls).model_copy(
        update={"occurred_at": at}
    ),
    st.builds(
        lambda v, svcs, its, state: subscription(v, svcs, its, state=state),
        st.integers(min_value=0, max_value=2**62),
        st.lists(
            st.builds(
                svc,
                st.text(max_size=12),
                st.text(max_size=12),
                st.sampled_from([None, "VP1", "Ä-ö-ü"]),
                st.sampled_from(list(ServiceState)),
            ),
            max_size=70,
        ),
        st.lists(st.builds(item, st.text(max_size=5), st.text(max_size=70)), max_size=3),
        st.sampled_from(list(SubscriptionState)),
    ),
    st.sampled_from([c.value for c in ActionCode]),
    st.none() | st.text(max_size=300),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@settings(max_examples=150, deadline=None)
@given(_events)
def test_compiled_event_reader_agrees_with_fastavro_and_validation(ev: LifecycleEvent) -> None:
    codec = default_codec()
    data = codec.encode_event(ev)
    fast = codec.decode_event(data)
    reference = validate_event(codec.decode(data)[1])
    assert fast == reference == ev
    assert fast.model_dump() == ev.model_dump()


@settings(max_examples=100, deadline=None)
@given(_events, st.data())
def test_compiled_event_reader_refuses_truncated_bytes(
    ev: LifecycleEvent, data: st.DataObject
) -> None:
    encoded = default_codec().encode_event(ev)
    cut = data.draw(st.integers(min_value=10, max_value=len(encoded) - 1))
    with pytest.raises(DecodeError) as err:
        default_codec().decode_event(encoded[:cut])
    assert err.value.reason is DecodeReason.MALFORMED


# --- the requests topic's one decode: a request, or a forwarded CRM event ------------------


def _request_then_event(codec: Codec, data: bytes) -> object:
    """The two decodes a reader of the requests topic used to do, for comparison."""
    try:
        return codec.decode_request(data)
    except DecodeError as not_a_request:
        try:
            return codec.decode_event(data)
        except DecodeError:
            raise not_a_request from None


def _outcome(decode: Any, data: bytes) -> object:
    try:
        return decode(data)
    except DecodeError as exc:
        return (exc.reason, str(exc), exc.field, exc.stage)


def _inbound_samples() -> list[bytes]:
    codec = default_codec()
    decision = plan(None, EVENT_OBJ, provider())
    bad_event = EVENT_OBJ.model_dump()
    bad_event["action"]["code"] = "TELEPORT_SUBSCRIPTION"
    samples = [
        codec.encode_request(decision.requests[0]),
        codec.encode_event(event("RESET_SUBSCRIPTION", SUB)),
        codec.encode_event(EVENT_OBJ),
        codec.encode(EVENT, bad_event),
        codec.encode_result(rejection_result(decision.rejections[0], EVENT_OBJ))
        if decision.rejections
        else codec.encode_event(EVENT_OBJ),
        codec.encode_state(decision.state) or b"",
        b"",
        b'{"request_id": "r1"}',
        codec.encode_event(EVENT_OBJ) + b"\x00",
    ]
    with_unknown_fingerprint = bytearray(samples[0])
    with_unknown_fingerprint[5] ^= 0xFF
    samples.append(bytes(with_unknown_fingerprint))
    return samples


_INBOUND = _inbound_samples()


def test_inbound_decode_gives_a_request_or_a_forwarded_event() -> None:
    codec = default_codec()
    decision = plan(None, EVENT_OBJ, provider())
    request = decision.requests[0]
    assert codec.decode_inbound(codec.encode_request(request)) == request
    reset = event("RESET_SUBSCRIPTION", SUB)
    got = codec.decode_inbound(codec.encode_event(reset))
    assert isinstance(got, LifecycleEvent) and got == reset
    assert got.action.code == ActionCode.RESET_SUBSCRIPTION


def test_inbound_decode_refuses_what_is_no_valid_request_or_event_as_a_request() -> None:
    bad = EVENT_OBJ.model_dump()
    bad["action"]["code"] = "TELEPORT_SUBSCRIPTION"
    with pytest.raises(DecodeError) as err:
        default_codec().decode_inbound(default_codec().encode(EVENT, bad))
    assert err.value.reason is DecodeReason.UNKNOWN_SCHEMA
    assert str(err.value) == "expected ProvisioningRequest, got SubscriptionLifecycleEvent"
    with pytest.raises(DecodeError) as err:
        default_codec().decode_inbound(default_codec().encode_event(EVENT_OBJ)[:30])
    assert err.value.reason is DecodeReason.MALFORMED
    state = default_codec().encode_state(plan(None, EVENT_OBJ, provider()).state)
    assert state is not None
    with pytest.raises(DecodeError) as err:
        default_codec().decode_inbound(state)
    assert str(err.value) == "expected ProvisioningRequest, got SubscriptionRecord"


@pytest.mark.parametrize("index", range(len(_INBOUND)))
def test_inbound_decode_agrees_with_a_request_decode_then_an_event_decode(index: int) -> None:
    data = _INBOUND[index]
    codec = default_codec()
    assert _outcome(codec.decode_inbound, data) == _outcome(
        lambda d: _request_then_event(codec, d), data
    )


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_INBOUND), st.data())
def test_inbound_decode_agrees_on_cut_and_corrupted_bytes(base: bytes, data: st.DataObject) -> None:
    raw = bytearray(base)
    if raw and data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        if raw:
            at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
            raw[at] = data.draw(st.integers(min_value=0, max_value=255))
    codec = default_codec()
    assert _outcome(codec.decode_inbound, bytes(raw)) == _outcome(
        lambda d: _request_then_event(codec, d), bytes(raw)
    )


def test_inbound_decode_reads_the_registry_format(registry_url: str) -> None:
    codec = Codec(SchemaSet(), registry=SchemaRegistryClient(registry_url))
    request = plan(None, EVENT_OBJ, provider()).requests[0]
    reset = event("RESET_SUBSCRIPTION", SUB)
    assert codec.decode_inbound(codec.encode_request(request)) == request
    assert codec.decode_inbound(codec.encode_event(reset)) == reset
    reader = Codec(SchemaSet(), registry=SchemaRegistryClient(registry_url))
    assert reader.decode_inbound(codec.encode_event(reset)) == reset


# --- the one reading of a validation error (pydantic's, msgspec's) --------------------------


def test_field_problems_name_each_refusal_by_its_dotted_path() -> None:
    from pydantic import BaseModel, ValidationError, field_validator

    from icareus_bridge.codec.errors import dotted, field_problems

    class Inner(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, v: int) -> int:
            if v < 0:
                raise ValueError("must be positive")
            return v

    class Outer(BaseModel):
        items: list[Inner]

    with pytest.raises(ValidationError) as err:
        Outer.model_validate({"items": [{"n": 1}, {"n": -1}, {"n": "x"}]})
    problems = field_problems(err.value)
    assert [p.path for p in problems] == [("items", "1", "n"), ("items", "2", "n")]
    assert [p.field for p in problems] == ["items.1.n", "items.2.n"]
    assert isinstance(problems[0].cause, ValueError) and problems[1].cause is None
    assert problems[0].message == "Value error, must be positive"
    assert dotted(()) == "<root>"
    with pytest.raises(ValidationError) as err:
        Outer.model_validate([])
    assert field_problems(err.value)[0].field == "<root>"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"subscription": {"version": "7"}}, "subscription.version", "Expected `int`, got `str`"),
        (
            {"subscription": {"services": [{"id": "s", "product_code": "P", "state": "NOPE"}]}},
            "subscription.services.0.state",
            "Invalid enum value 'NOPE'",
        ),
        (
            {"subscription": {"subscriber": {"first_name": "A"}}},
            "subscription.subscriber.account_number",
            "Object missing required field `account_number`",
        ),
        ({"surprise": 1}, "surprise", "Object contains unknown field `surprise`"),
        ({"occurred_at": 2**63}, "occurred_at", "Expected `int` <= 9223372036854775807"),
    ],
)
def test_a_model_refusal_names_its_field_by_its_dotted_path(
    change: dict[str, Any], field: str, message: str
) -> None:
    from icareus_bridge.codec.errors import field_problems
    from icareus_bridge.core.model import ModelError

    good = event("BECOME_SUBSCRIBER", subscription(7, [svc("a", "BASIC-TV", "VP1")])).model_dump(
        mode="json"
    )
    bad = {**good, **change}
    if "subscription" in change:  # the changed fields of the subscription, the rest kept
        bad["subscription"] = {**good["subscription"], **change["subscription"]}
    with pytest.raises(ModelError) as err:
        LifecycleEvent.model_validate(bad)
    (problem,) = field_problems(err.value)
    assert problem.field == field and problem.message == message and problem.cause is None
    with pytest.raises(DecodeError) as decoded:
        validate_event(bad)
    assert decoded.value.field == field and decoded.value.reason is DecodeReason.INVALID
