"""The compiled Avro reader and writer against fastavro and a strict reference reader, over
random bytes and mutated valid bodies of every schema the bridge writes.

On valid Avro all three readers agree on the value. Where the reference refuses, the compiled
reader refuses too (a MALFORMED decode error in the codec); fastavro may instead return a value
only for the leniencies the reference names (numbers wrapped around, a boolean byte over 1, a
negative enum index or union branch). The writer writes fastavro's bytes for every record
fastavro's validation accepts and refuses the others with the field's name."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icareus_bridge.codec import EVENT, STATE, Codec, DecodeError, DecodeReason, EncodeError
from icareus_bridge.codec.errors import OutOfRange
from icareus_bridge.codec.reader import compile_reader
from icareus_bridge.codec.writer import compile_writer
from icareus_bridge.core.model import ActionCode
from tests.fuzz.avro_reference import (
    INT_MAX,
    INT_MIN,
    LONG_MAX,
    LONG_MIN,
    Refused,
    StrictReader,
    ValueMaker,
    mutate,
)

CODEC = Codec()
TOY: dict[str, Any] = {
    "type": "record",
    "name": "Toy",
    "namespace": "t",
    "fields": [
        {"name": "n", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "b", "type": "boolean"},
        {"name": "o", "type": ["null", "string"]},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "a", "type": {"type": "array", "items": ["null", "long"]}},
    ],
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Toy": TOY,
    **{name: json.loads(v.source) for name, v in CODEC.schemas.current.items()},
}
KNOWN_ACTIONS = {a.value for a in ActionCode}
READ_ERRORS = (EOFError, IndexError, KeyError, ValueError)


class Target:
    """One schema: the compiled dict reader, the strict reference, fastavro, random values."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.compiled = compile_reader(schema, sequence=list)
        self.parsed = fastavro.parse_schema(_no_logical_types(schema))
        self.values = ValueMaker(schema)
        self.writer = compile_writer(schema)

    def strict(self, body: bytes) -> Any:
        """The value, or the Refused reason ('trailing' for bytes after the record)."""
        try:
            value, end = StrictReader(self.schema).read(body)
        except Refused as exc:
            return exc
        return value if end == len(body) else Refused("trailing")

    def fastavro(self, body: bytes) -> Any:
        fo = io.BytesIO(body)
        try:
            value = fastavro.schemaless_reader(fo, self.parsed, None)
        except Exception as exc:  # any refusal will do: only its being one is compared
            return exc
        return value if fo.tell() == len(body) else Refused("trailing")

    def ours(self, body: bytes) -> Any:
        try:
            value, end = self.compiled(body, 0)
        except READ_ERRORS as exc:
            return exc
        return value if end == len(body) else Refused("trailing")

    def valid_body(self, rng: random.Random) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, self.values.make(rng))
        return buf.getvalue()


def _no_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _no_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_no_logical_types(v) for v in node]
    return node


TARGETS = {name: Target(schema) for name, schema in SCHEMAS.items()}


def check_reader(target: Target, body: bytes) -> str:
    """Compare the three readers on `body`; returns which case it was (for the counts)."""
    expected, ours, theirs = target.strict(body), target.ours(body), target.fastavro(body)
    if not isinstance(expected, Refused):
        assert ours == expected, body.hex()
        assert theirs == expected, body.hex()
        return "valid"
    assert isinstance(ours, BaseException), (body.hex(), expected.reason, ours)
    if not isinstance(theirs, BaseException):
        assert expected.lenient, (body.hex(), expected.reason, theirs)
        return "fastavro_lenient"
    return "refused"


def check_event_decoder(body: bytes) -> str:
    """The codec's event path (compiled reader building the models) against the reference."""
    expected = TARGETS[EVENT].strict(body)
    data = CODEC._headers[EVENT] + body
    try:
        event = CODEC.decode_event(data)
    except DecodeError as exc:
        if isinstance(expected, Refused):
            assert exc.reason is DecodeReason.MALFORMED, (body.hex(), exc)
            return "refused"
        assert exc.reason is DecodeReason.INVALID and exc.field == "action.code", exc
        assert expected["action"]["code"] not in KNOWN_ACTIONS
        return "invalid"
    assert not isinstance(expected, Refused), (body.hex(), expected.reason)
    assert _plain(event.model_dump()) == expected
    return "valid"


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)  # StrEnum members as their symbols
    return node


# --- the reader -------------------------------------------------------------------------------


def test_the_numbers_fastavro_wraps_around_are_refused() -> None:
    toy = TARGETS["Toy"]
    tail = b"\x00\x00\x00\x00"  # i=0, b=false, o=null, e=A, a=[] follow n
    cases = {
        b"\xfe" + b"\xff" * 8 + b"\x01": LONG_MAX,
        b"\xff" * 9 + b"\x01": LONG_MIN,
        b"\x80" * 9 + b"\x02": None,  # 2^64: fastavro reads 0
        b"\x82" + b"\x80" * 9 + b"\x00": None,  # 1 in 11 bytes: fastavro reads 1
    }
    for n, value in cases.items():
        body = n + b"\x00" + tail
        if value is None:
            assert isinstance(toy.ours(body), OutOfRange)
            assert check_reader(toy, body) == "fastavro_lenient"
        else:
            assert toy.ours(body)["n"] == value == toy.fastavro(body)["n"]
    int_over = b"\x00" + b"\x80\x80\x80\x80\x10" + tail  # i = 2^31
    assert isinstance(toy.ours(int_over), OutOfRange)
    assert toy.fastavro(int_over)["i"] == 1 << 31  # what fastavro lets through
    assert isinstance(toy.ours(b"\x00\x00\x02" + tail[1:]), ValueError)  # boolean byte 2


def test_a_state_version_of_2_63_is_malformed_not_minus_one() -> None:
    state = {
        "subscription_id": "s",
        "subscription_number": "n",
        "last_version": 0,
        "last_event_id": None,
        "snapshot": None,
        "accounts": [],
        "parked_behind": None,
    }
    good = CODEC.encode(STATE, state)
    assert good[10:14] == b"\x02s\x02n" and good[14] == 0  # last_version's one byte
    wrapped = good[:14] + b"\x80" * 9 + b"\x02" + good[15:]  # 2^63 as fastavro would wrap
    with pytest.raises(DecodeError) as refused:
        CODEC.decode_state(wrapped)
    assert refused.value.reason is DecodeReason.MALFORMED
    state["last_version"] = 1 << 63
    with pytest.raises(EncodeError, match="last_version"):
        CODEC.encode(STATE, state)


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeded_random_and_mutated_bodies_read_as_the_reference_reads_them(name: str) -> None:
    target, rng = TARGETS[name], random.Random(f"differential-{name}")
    cases: dict[str, int] = {}
    for i in range(5000):
        if i % 5 == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            body = mutate(target.valid_body(rng), rng)
        case = check_reader(target, body)
        cases[case] = cases.get(case, 0) + 1
        if name == EVENT:
            check_event_decoder(body)
    # The inputs reach all three outcomes (else they prove nothing about one of them).
    assert cases.get("valid", 0) > 100 and cases.get("refused", 0) > 100, cases
    assert sum(cases.values()) == 5000


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(TARGETS)), body=st.binary(max_size=200))
def test_any_bytes_read_as_the_reference_reads_them(name: str, body: bytes) -> None:
    check_reader(TARGETS[name], body)
    if name == EVENT:
        check_event_decoder(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(TARGETS)),
    seed=st.integers(0, 2**32 - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**6),
)
def test_edited_valid_bodies_read_as_the_reference_reads_them(
    name: str, seed: int, edits: list[tuple[int, int]], cut: int
) -> None:
    target = TARGETS[name]
    body = bytearray(target.valid_body(random.Random(seed)))
    for at, byte in edits:
        if body:
            body[at % len(body)] = byte
    if cut % 3 == 0 and body:
        del body[cut % len(body) :]
    check_reader(target, bytes(body))
    if name == EVENT:
        check_event_decoder(bytes(body))


# --- the writer -------------------------------------------------------------------------------


def _fastavro_bytes(target: Target, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, target.parsed, record)
    return buf.getvalue()


def check_writer(target: Target, record: dict[str, Any]) -> bool:
    """True when written (fastavro's bytes), False when refused as fastavro's validation does."""
    if validate(record, target.parsed, raise_errors=False):
        assert target.writer(record) == _fastavro_bytes(target, record)
        return True
    with pytest.raises(OutOfRange):
        target.writer(record)
    return False


@settings(max_examples=500, deadline=None)
@given(
    n=st.one_of(st.integers(), st.sampled_from([LONG_MAX, LONG_MIN, LONG_MAX + 1, LONG_MIN - 1])),
    i=st.one_of(st.integers(), st.sampled_from([INT_MAX, INT_MIN, INT_MAX + 1, INT_MIN - 1])),
    a=st.lists(st.one_of(st.none(), st.integers()), max_size=4),
)
def test_the_writer_writes_what_fastavro_accepts_and_refuses_the_rest(
    n: int, i: int, a: list[int | None]
) -> None:
    record = {"n": n, "i": i, "b": True, "o": None, "e": "B", "a": a}
    written = check_writer(TARGETS["Toy"], record)
    in_range = LONG_MIN <= n <= LONG_MAX and INT_MIN <= i <= INT_MAX
    assert written == (in_range and all(x is None or LONG_MIN <= x <= LONG_MAX for x in a))


def _numbers(
    node: Any,
    schema: Any,
    path: str,
    out: list[tuple[str, Callable[[int], None]]],
    named: dict[str, Any],
    ns: str,
) -> None:
    """Setters for every long/int in `node` (a value of `schema`), with their field path."""
    if isinstance(schema, list):
        for branch in schema:
            if branch != "null" and node is not None:
                _numbers(node, branch, path, out, named, ns)
        return
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, dict) and schema.get("type") == "record":
        full = (
            schema["name"]
            if "." in schema["name"]
            else (f"{schema.get('namespace', ns)}.{schema['name']}")
        )
        named[full] = named[schema["name"]] = schema
        own = full.rsplit(".", 1)[0]
        for f in schema["fields"]:
            t = f["type"]
            kind = t.get("type") if isinstance(t, dict) else t
            if kind in ("long", "int"):

                def put(v: int, rec: dict[str, Any] = node, k: str = f["name"]) -> None:
                    rec[k] = v

                out.append((f"{schema['name']}.{f['name']}:{kind}", put))
            else:
                _numbers(node[f["name"]], t, f"{path}.{f['name']}", out, named, own)
    elif isinstance(schema, dict) and schema.get("type") == "array":
        for item in node:
            _numbers(item, schema["items"], path, out, named, ns)
    elif isinstance(schema, dict) and schema.get("type") == "enum":
        named[schema["name"]] = schema


@pytest.mark.parametrize("name", [n for n in TARGETS if n != "Toy"])
def test_records_of_the_bridge_schemas_are_written_as_fastavro_writes_or_refused(
    name: str,
) -> None:
    target, rng = TARGETS[name], random.Random(f"writer-{name}")
    written = refused = 0
    for _ in range(500):
        record = target.values.make(rng)
        numbers: list[tuple[str, Callable[[int], None]]] = []
        _numbers(record, target.schema, "", numbers, {}, str(target.schema.get("namespace")))
        if numbers and rng.random() < 0.5:
            field, put = rng.choice(numbers)
            kind = field.rsplit(":", 1)[1]
            put(
                rng.choice(
                    [1 << 63, -(1 << 63) - 1, 1 << 80]
                    + ([1 << 31, -(1 << 31) - 1] if kind == "int" else [])
                )
            )
            with pytest.raises(EncodeError, match=field.split(":")[0].split(".")[-1]):
                CODEC.encode(name, record)
        if check_writer(target, record):
            written += 1
        else:
            refused += 1
    assert written > 100 and refused > 100, (written, refused)
