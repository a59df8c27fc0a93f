"""Readers compiled from an Avro schema for the codec's hot path: the planner decodes every event
with the current event schema, so that one schema gets straight-line Python that reads the
binary body and builds the domain models directly (the schema has already typed every value).
fastavro stays the reader for everything else (older writer versions, other records) and the
reference this reader is tested against.

What keeps the generated code short per value: single-byte varints (every union branch, enum
index, small number and string length under 64 bytes) are looked up in tables instead of
decoded arithmetically, multi-byte ones go through one helper; records are read inline (no
call per record). A string length that runs past the end of the data is not checked per
string: the position only moves forward, so the read fails at the next value, or the final
position is past the end (`read` checks).

On valid Avro the reader gives what fastavro gives. Where fastavro is lenient it refuses: a long
varint of more than 10 bytes or over 64 bits, an int varint of more than 5 bytes or outside 32
bits (fastavro wraps both around), a boolean byte other than 0 or 1, a negative enum index
(fastavro counts it from the end). `tests/unit/test_avro_differential.py` holds it to that."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from icareus_bridge.codec.errors import InvalidBoolean, OutOfRange

Reader = Callable[[bytes, int], tuple[Any, int]]


@dataclass(frozen=True)
class Struct:
    """Build a record by calling `cls` with its fields, inline: positionally when the schema's
    fields are `cls.__struct_fields__` in that order, else by keyword (a msgspec Struct, or any
    class whose constructor takes the schema's field names)."""

    cls: type


Builder = Callable[[dict[str, Any]], Any] | Struct

# Single-byte zigzag varints: the byte itself is the encoding (high bit clear).
_ZIGZAG = tuple((b >> 1) ^ -(b & 1) for b in range(128))
# String lengths: -1 marks a multi-byte varint (slow path); a negative length becomes one past
# any data, so that the read fails (see the module doc).
_PAST_END = 1 << 62
_LENGTH = tuple((b >> 1 if not b & 1 else _PAST_END) if b < 128 else -1 for b in range(256))

_PRELUDE = """
def _long(data, pos):
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift == 63:
            # The 10th byte holds bit 63 only: anything more is not an int64.
            b = data[pos]
            pos += 1
            if b > 1:
                raise OutOfRange('long varint longer than 10 bytes or over 64 bits')
            n |= b << 63
            break
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _int(data, pos):
    start = pos
    n, pos = _long(data, pos)
    if pos - start > 5 or not -0x80000000 <= n <= 0x7FFFFFFF:
        raise OutOfRange('int varint longer than 5 bytes or outside 32 bits')
    return n, pos


def _length(data, pos):
    n, pos = _long(data, pos)
    if n < 0:
        raise EOFError('negative length')
    return n, pos

"""


def full_name(schema: Mapping[str, Any], namespace: str) -> str:
    """The full name of a named schema (record, enum, fixed) met inside `namespace`, as the
    Avro specification resolves it; the compiled reader and writer both name types by it."""
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


class _Compiler:
    def __init__(
        self,
        builders: Mapping[str, Builder],
        enums: Mapping[str, Sequence[Any]],
        sequence: Callable[[list[Any]], Any],
    ) -> None:
        self.builders = builders
        self.enums = enums
        self.env: dict[str, Any] = {
            "_seq": sequence,
            "_ZZ": _ZIGZAG,
            "_LEN": _LENGTH,
            "OutOfRange": OutOfRange,
            "InvalidBoolean": InvalidBoolean,
        }
        self.functions: list[str] = []
        self.records: dict[str, str] = {}  # full name -> function name
        self.named: dict[str, Any] = {}
        self.inlining: set[str] = set()
        self.counter = 0

    def tmp(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def constant(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.env)}"
        self.env[name] = value
        return name

    def long(self, out: str, ind: str, helper: str = "_long") -> list[str]:
        return [
            f"{ind}b = data[pos]",
            f"{ind}if b < 128:",
            f"{ind}    {out} = _ZZ[b]",
            f"{ind}    pos += 1",
            f"{ind}else:",
            f"{ind}    {out}, pos = {helper}(data, pos)",
        ]

    def value(self, schema: Any, out: str, ind: str, namespace: str) -> list[str]:
        """Lines that read one value of `schema` into the local `out`."""
        if isinstance(schema, str):
            return self.named_or_primitive(schema, out, ind, namespace)
        if isinstance(schema, list):
            return self.union(schema, out, ind, namespace)
        t = schema["type"]
        if t == "record":
            full = full_name(schema, namespace)
            if full in self.inlining:  # a recursive type: call its own function
                fn = self.record(schema, namespace)
                return [f"{ind}{out}, pos = {fn}(data, pos)"]
            return self.inline_record(schema, full, out, ind)
        if t == "enum":
            return self.enum(schema, out, ind, namespace)
        if t == "array":
            return self.array(schema, out, ind, namespace)
        if t in ("long", "int", "string", "boolean", "null"):
            return self.value(t, out, ind, namespace)
        raise ValueError(f"unsupported Avro type {t!r}")

    def named_or_primitive(self, schema: str, out: str, ind: str, namespace: str) -> list[str]:
        """A type given by name: a primitive, or a named type defined earlier in the schema."""
        if schema == "long":
            return self.long(out, ind)
        if schema == "int":
            return self.long(out, ind, "_int")
        if schema == "string":
            n = self.tmp()
            return [
                f"{ind}{n} = _LEN[data[pos]]",
                f"{ind}if {n} < 0:",
                f"{ind}    {n}, pos = _length(data, pos)",
                f"{ind}else:",
                f"{ind}    pos += 1",
                f"{ind}end = pos + {n}",
                f"{ind}{out} = data[pos:end].decode()",
                f"{ind}pos = end",
            ]
        if schema == "boolean":
            return [
                f"{ind}b = data[pos]",
                f"{ind}if b > 1:",
                f"{ind}    raise InvalidBoolean('boolean byte is neither 0 nor 1')",
                f"{ind}{out} = b == 1",
                f"{ind}pos += 1",
            ]
        if schema == "null":
            return [f"{ind}{out} = None"]
        full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
        if full in self.named:
            return self.value(self.named[full], out, ind, namespace)
        raise ValueError(f"unsupported Avro type {schema!r}")

    def union(self, branches: list[Any], out: str, ind: str, namespace: str) -> list[str]:
        idx = self.tmp()
        lines = self.long(idx, ind)
        for k, branch in enumerate(branches):
            lines.append(f"{ind}{'if' if k == 0 else 'elif'} {idx} == {k}:")
            lines += self.value(branch, out, ind + "    ", namespace) or [f"{ind}    pass"]
        lines += [f"{ind}else:", f"{ind}    raise IndexError('union branch out of range')"]
        return lines

    def enum(self, schema: Mapping[str, Any], out: str, ind: str, namespace: str) -> list[str]:
        full = full_name(schema, namespace)
        self.named[full] = schema
        values = tuple(self.enums.get(full, schema["symbols"]))
        symbols = self.constant("E", values)
        # byte -> value for the single-byte indexes; a missing key is an invalid index
        by_byte = self.constant("EB", {k << 1: v for k, v in enumerate(values) if k < 64})
        idx = self.tmp()
        return [
            f"{ind}b = data[pos]",
            f"{ind}if b < 128:",
            f"{ind}    {out} = {by_byte}[b]",
            f"{ind}    pos += 1",
            f"{ind}else:",
            f"{ind}    {idx}, pos = _long(data, pos)",
            f"{ind}    if {idx} < 0:",
            f"{ind}        raise IndexError('negative enum index')",
            f"{ind}    {out} = {symbols}[{idx}]",
        ]

    def array(self, schema: Mapping[str, Any], out: str, ind: str, namespace: str) -> list[str]:
        items, count, item = self.tmp(), self.tmp(), self.tmp()
        lines = [f"{ind}{items} = []", f"{ind}while True:"]
        inner = ind + "    "
        lines += self.long(count, inner)
        lines += [
            f"{inner}if {count} == 0:",
            f"{inner}    break",
            f"{inner}if {count} < 0:",
            f"{inner}    {count} = -{count}",
            *self.long("_", inner + "    "),  # block size in bytes: not needed
            f"{inner}for _ in range({count}):",
        ]
        lines += self.value(schema["items"], item, inner + "    ", namespace)
        lines += [f"{inner}    {items}.append({item})", f"{ind}{out} = _seq({items})"]
        return lines

    def build(self, full: str, out: str, fields: list[tuple[str, str]], ind: str) -> list[str]:
        """Lines building record `full` into `out` from its (field name, local) pairs."""
        how = self.builders.get(full, dict)
        if isinstance(how, Struct):
            cls = self.constant("C", how.cls)
            names = tuple(name for name, _ in fields)
            if names == tuple(getattr(how.cls, "__struct_fields__", ())):
                args = ", ".join(local for _, local in fields)
            else:
                args = ", ".join(f"{name}={local}" for name, local in fields)
            return [f"{ind}{out} = {cls}({args})"]
        as_dict = ", ".join(f"{name!r}: {local}" for name, local in fields)
        return [f"{ind}{out} = {self.constant('B', how)}({{{as_dict}}})"]

    def inline_record(self, schema: Mapping[str, Any], full: str, out: str, ind: str) -> list[str]:
        # Inline, not a call per record: no call and no (value, pos) tuple per array element.
        self.named[full] = schema
        self.inlining.add(full)
        ns = full.rsplit(".", 1)[0] if "." in full else ""
        lines: list[str] = []
        fields: list[tuple[str, str]] = []
        for f in schema["fields"]:
            local = self.tmp()
            lines += self.value(f["type"], local, ind, ns)
            fields.append((str(f["name"]), local))
        self.inlining.discard(full)
        return lines + self.build(full, out, fields, ind)

    def record(self, schema: Mapping[str, Any], namespace: str) -> str:
        full = full_name(schema, namespace)
        if full in self.records:
            return self.records[full]
        fn = f"r{len(self.records)}_{full.rsplit('.', 1)[-1]}"
        self.records[full] = fn
        was_inlining = full in self.inlining
        self.inlining.add(full)
        body = self.inline_record(schema, full, "value", "    ")
        if was_inlining:
            self.inlining.add(full)
        self.functions.append("\n".join([f"def {fn}(data, pos):", *body, "    return value, pos"]))
        return fn


def compile_reader(
    schema: Mapping[str, Any],
    *,
    builders: Mapping[str, Builder] | None = None,
    enums: Mapping[str, Sequence[Any]] | None = None,
    sequence: Callable[[list[Any]], Any] = tuple,
) -> Reader:
    """A reader of binary Avro bodies written with exactly `schema` (no resolution).

    `builders` maps a record's full name to what builds it from its fields: a callable taking
    the field dict, or a `Struct` (its class called inline); default: the dict itself.
    `enums` maps an enum's full name to the values standing for its symbols (default: the
    symbol strings); arrays become `sequence(list)`. The reader raises EOFError, IndexError,
    KeyError or ValueError (UnicodeDecodeError, `OutOfRange`, `InvalidBoolean`) on bytes that
    do not decode; the caller checks for trailing bytes."""
    c = _Compiler(builders or {}, enums or {}, sequence)
    top = c.record(schema, str(schema.get("namespace", "")))
    source = _PRELUDE + "\n\n" + "\n\n\n".join(c.functions) + "\n"
    env = dict(c.env)
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), env)
    record_reader = env[top]

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        value, end = record_reader(data, pos)
        if end > len(data):
            raise EOFError("a string runs past the end of the data")
        return value, end

    return read


__all__ = ["Builder", "Reader", "Struct", "compile_reader", "full_name"]
