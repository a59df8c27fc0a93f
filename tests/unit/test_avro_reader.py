"""The compiled Avro reader on bytes fastavro would read differently if it cut corners:
multi-byte (and non-minimal) varints, long strings, invalid enum indexes and union branches,
negative lengths and strings running past the end."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from icareus_bridge.codec import DecodeError, DecodeReason, default_codec
from icareus_bridge.codec.reader import Struct, compile_reader
from icareus_bridge.core.model import Service, ServiceState
from tests.unit.crm_events import event, item, subscription, svc

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "R",
    "namespace": "t",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "o", "type": ["null", "string"]},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "a", "type": {"type": "array", "items": "string"}},
    ],
}
READ = compile_reader(SCHEMA, sequence=list)


def _fastavro(data: bytes) -> Any:
    fo = io.BytesIO(data)
    value = fastavro.schemaless_reader(fo, fastavro.parse_schema(SCHEMA), None)
    assert fo.tell() == len(data)
    return value


def _written(value: dict[str, Any]) -> bytes:
    fo = io.BytesIO()
    fastavro.schemaless_writer(fo, fastavro.parse_schema(SCHEMA), value)
    return fo.getvalue()


@pytest.mark.parametrize(
    "value",
    [
        {"s": "", "n": 0, "o": None, "e": "A", "a": []},
        {"s": "x" * 63, "n": -64, "o": "y" * 64, "e": "C", "a": ["z" * 200, "", "Ä-ö"]},
        {"s": "Ελένη" * 30, "n": 2**63 - 1, "o": "", "e": "B", "a": ["q"] * 70},
        {"s": "a", "n": -(2**63), "o": None, "e": "A", "a": ["b"]},
    ],
)
def test_reads_what_fastavro_writes(value: dict[str, Any]) -> None:
    data = _written(value)
    assert READ(data, 0) == (value, len(data)) == (_fastavro(data), len(data))


def test_non_minimal_varints_read_as_fastavro_reads_them() -> None:
    # string length 1 as two bytes, long 1 as two bytes, union branch 1 and enum index 2 padded
    data = b"\x82\x00a" + b"\x82\x00" + b"\x82\x00\x02b" + b"\x84\x00" + b"\x82\x00\x02c\x00"
    expected = {"s": "a", "n": 1, "o": "b", "e": "C", "a": ["c"]}
    assert READ(data, 0) == (expected, len(data))
    assert _fastavro(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x03a\x00\x00\x00\x00",  # negative string length (single byte)
        b"\x81\x01a\x00\x00\x00\x00",  # negative string length (two bytes)
        b"\x0aab\x00\x00\x00\x00",  # string runs past the end
        b"\x02a\x00\x00\x06\x00",  # enum index 3 of 3 symbols
        b"\x02a\x00\x00\x01\x00",  # enum index -1
        b"\x02a\x00\x00\x86\x00\x00",  # enum index 3, two bytes
        b"\x02a\x00\x04\x00\x00",  # union branch 2 of 2
        b"\x02a\x00\x00\x00\x02\x0cab",  # array item runs past the end
        b"\x02a\x00\x00\x00\x02",  # truncated array
        b"\x04\xff\xfe\x00\x00\x00\x00",  # not UTF-8
    ],
)
def test_refuses_what_does_not_decode(data: bytes) -> None:
    with pytest.raises((EOFError, IndexError, KeyError, UnicodeDecodeError)):
        READ(data, 0)


SERVICE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Service",
    "namespace": "t",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "product_code", "type": "string"},
        {
            "name": "state",
            "type": {"type": "enum", "name": "S", "symbols": [s.value for s in ServiceState]},
        },
        {"name": "distributor", "type": ["null", "string"]},
    ],
}


def test_structs_are_built_inline_as_the_model_would_hold_them() -> None:
    read = compile_reader(
        SERVICE_SCHEMA,
        builders={"t.Service": Struct(Service)},
        enums={"t.S": list(ServiceState)},
    )
    data = b"\x02a\x02b\x02\x02\x06VP1"
    built, end = read(data, 0)
    expected = Service(id="a", product_code="b", state=ServiceState.EFFECTIVE, distributor="VP1")
    assert end == len(data)
    assert type(built) is Service and built == expected
    assert built.model_dump() == expected.model_dump()
    assert built.model_copy(update={"id": "c"}).id == "c"
    with pytest.raises(AttributeError):
        built.id = "x"  # type: ignore[misc]


def test_a_struct_whose_fields_are_in_another_order_is_built_by_keyword() -> None:
    first, second, *rest = SERVICE_SCHEMA["fields"]
    schema = {**SERVICE_SCHEMA, "fields": [second, first, *rest]}
    read = compile_reader(
        schema, builders={"t.Service": Struct(Service)}, enums={"t.S": list(ServiceState)}
    )
    built, _ = read(b"\x02b\x02a\x02\x00", 0)
    assert built == Service(id="a", product_code="b", state=ServiceState.EFFECTIVE)


def test_any_corrupted_event_byte_gives_an_event_or_a_decode_error() -> None:
    codec = default_codec()
    sub = subscription(
        7, [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", None)], [item("i", "SN1")]
    )
    data = codec.encode_event(event("ADD_SERVICE", sub, classification="UPGRADE"))
    for pos in range(10, len(data)):
        for byte in (0x00, 0x01, 0x06, 0x7F, 0x80, 0xFF):
            corrupted = data[:pos] + bytes([byte]) + data[pos + 1 :]
            try:
                codec.decode_event(corrupted)
            except DecodeError as exc:
                assert exc.reason in (DecodeReason.MALFORMED, DecodeReason.INVALID)
