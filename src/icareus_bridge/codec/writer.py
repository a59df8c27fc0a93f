"""Writers compiled from an Avro schema for the codec's hot path: the planner encodes every
request, rejection result and state record it produces, so each current schema gets
straight-line Python that writes the binary body from the record dict (as `model_dump` gives
it) or from the model itself (its attributes, which skips `model_dump`). fastavro
remains the reference (tests compare both byte for byte) and the fallback for a schema shape
this compiler does not handle (`UnsupportedSchema`). A long or int out of its type's range
raises `OutOfRange` naming the field, where fastavro would refuse it or write what no strict
reader reads back."""

from __future__ import annotations

import keyword
import struct
from collections.abc import Callable, Mapping
from typing import Any

from icareus_bridge.codec.errors import OutOfRange, UnsupportedSchema
from icareus_bridge.codec.reader import full_name

Writer = Callable[[Any], bytes]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1


def _out_of_range(field: str, kind: str, value: Any) -> OutOfRange:
    # A long outside 64 bits (fastavro refuses it too) or an int outside 32 bits (fastavro
    # writes it; no strict reader reads it back). A value that is no number: TypeError.
    text = repr(value)
    if len(text) > 40:
        text = text[:40] + "..."
    return OutOfRange(f"{field}: {text} is not an Avro {kind}")


def _long(buf: bytearray, n: int) -> None:
    # Only for lengths and enum indexes, which are never out of range.
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _string(buf: bytearray, s: str) -> None:
    b = s.encode("utf-8")
    n = len(b)
    if n < 64:
        buf.append(n << 1)
    else:
        _long(buf, n)
    buf += b


class _Compiler:
    def __init__(self) -> None:
        self.env: dict[str, Any] = {
            "_long": _long,
            "_range": _out_of_range,
            "_string": _string,
            "_pack_f": struct.Struct("<f").pack,
            "_pack_d": struct.Struct("<d").pack,
        }
        self.functions: list[str] = []
        self.named: dict[str, Any] = {}  # full name -> schema
        self.compiled: dict[str, str] = {}  # full name -> function name
        self.counter = 0
        self.path = ""  # the field being compiled, for error messages

    def tmp(self) -> str:
        self.counter += 1
        return f"v{self.counter}"

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            if full not in self.named:
                raise UnsupportedSchema(f"unknown named type {schema}")
            return self.named[full], full.rsplit(".", 1)[0] if "." in full else ""
        return schema, namespace

    def emit(self, schema: Any, expr: str, ind: str, ns: str) -> list[str]:
        """Lines writing `expr` (a Python expression) of `schema` to `buf`."""
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            schema, ns = self.resolve(schema, ns)
            if isinstance(schema, dict) and schema.get("type") in ("record", "enum"):
                full = full_name(schema, ns)
                return [f"{ind}{self.function_for(schema, full, ns)}(buf, {expr})"]
        if isinstance(schema, list):
            return self.union(schema, expr, ind, ns)
        if isinstance(schema, dict):
            t = schema["type"]
            if t in ("record", "error"):
                full = full_name(schema, ns)
                self.named[full] = schema
                return [f"{ind}{self.function_for(schema, full, ns)}(buf, {expr})"]
            if t == "enum":
                full = full_name(schema, ns)
                self.named[full] = schema
                return [f"{ind}{self.function_for(schema, full, ns)}(buf, {expr})"]
            if t == "array":
                item = self.tmp()
                return [
                    f"{ind}if {expr}:",
                    *self.long(f"len({expr})", ind + "    "),
                    f"{ind}    for {item} in {expr}:",
                    *self.emit(schema["items"], item, ind + "        ", ns),
                    f"{ind}buf.append(0)",
                ]
            if t == "map":
                k, v = self.tmp(), self.tmp()
                return [
                    f"{ind}if {expr}:",
                    *self.long(f"len({expr})", ind + "    "),
                    f"{ind}    for {k}, {v} in {expr}.items():",
                    f"{ind}        _string(buf, {k})",
                    *self.emit(schema["values"], v, ind + "        ", ns),
                    f"{ind}buf.append(0)",
                ]
            if t == "fixed":
                return [f"{ind}buf += {expr}"]
            if t in _PRIMITIVES:
                return self.emit(t, expr, ind, ns)
            raise UnsupportedSchema(f"type {t}")
        if schema == "null":
            return []
        if schema == "boolean":
            return [f"{ind}buf.append(1 if {expr} else 0)"]
        if schema in ("int", "long"):
            return self.long(expr, ind, schema)
        if schema == "string":
            b = self.tmp()
            return [
                f"{ind}{b} = {expr}.encode()",
                f"{ind}if len({b}) < 64:",
                f"{ind}    buf.append(len({b}) << 1)",
                f"{ind}else:",
                f"{ind}    _long(buf, len({b}))",
                f"{ind}buf += {b}",
            ]
        if schema == "bytes":
            return [f"{ind}_long(buf, len({expr}))", f"{ind}buf += {expr}"]
        if schema == "float":
            return [f"{ind}buf += _pack_f({expr})"]
        if schema == "double":
            return [f"{ind}buf += _pack_d({expr})"]
        raise UnsupportedSchema(f"type {schema!r}")

    def long(self, expr: str, ind: str, kind: str | None = None) -> list[str]:
        """Zig-zag varint, inline: one byte for 0..63 (most numbers), else the loop. With
        `kind` ("int" or "long") the value is a field's: checked to be an integer in range."""
        n = self.tmp()
        check = []
        if kind is not None:
            low, high = (INT_MIN, INT_MAX) if kind == "int" else (LONG_MIN, LONG_MAX)
            check = [
                f"{ind}    if not {low} <= {n} <= {high}:",
                f"{ind}        raise _range({self.path!r}, {kind!r}, {n})",
            ]
        return [
            f"{ind}{n} = {expr}",
            f"{ind}if 0 <= {n} < 64:",
            f"{ind}    buf.append({n} << 1)",
            f"{ind}else:",
            *check,
            f"{ind}    {n} = ({n} << 1) ^ ({n} >> 63)",
            f"{ind}    while {n} > 0x7F:",
            f"{ind}        buf.append(({n} & 0x7F) | 0x80)",
            f"{ind}        {n} >>= 7",
            f"{ind}    buf.append({n})",
        ]

    def union(self, branches: list[Any], expr: str, ind: str, ns: str) -> list[str]:
        if len(branches) != 2 or "null" not in branches:
            raise UnsupportedSchema("only unions of null and one other type are compiled")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        v = self.tmp()
        return [
            f"{ind}{v} = {expr}",
            f"{ind}if {v} is None:",
            f"{ind}    buf.append({null_index * 2})",
            f"{ind}else:",
            f"{ind}    buf.append({(1 - null_index) * 2})",
            *(self.emit(other, v, ind + "    ", ns) or [f"{ind}    pass"]),
        ]

    def function_for(self, schema: Mapping[str, Any], full: str, ns: str) -> str:
        if full in self.compiled:
            return self.compiled[full]
        name = f"w_{full.replace('.', '_')}"
        self.compiled[full] = name
        own_ns = full.rsplit(".", 1)[0] if "." in full else ns
        if schema["type"] == "enum":
            table = f"_enum_{len(self.compiled)}"
            self.env[table] = {s: i for i, s in enumerate(schema["symbols"])}
            self.functions.append(f"def {name}(buf, value):\n    _long(buf, {table}[value])\n")
            return name
        # Records come as dicts (model_dump) or as models, read by attribute.
        lines = [f"def {name}(buf, rec):"]
        from_dict: list[str] = []
        from_model: list[str] = []
        values: list[str] = []
        for f in schema["fields"]:
            fname = f["name"]
            v = self.tmp()
            values.append(v)
            if "default" in f:
                default = self.tmp()
                self.env[default] = f["default"]
                from_dict.append(f"        {v} = rec.get({fname!r}, {default})")
                from_model.append(f"        {v} = getattr(rec, {fname!r}, {default})")
            else:
                from_dict.append(f"        {v} = rec[{fname!r}]")
                attr = f"rec.{fname}" if _plain_name(fname) else f"getattr(rec, {fname!r})"
                from_model.append(f"        {v} = {attr}")
        if values:
            lines += ["    if rec.__class__ is dict:", *from_dict, "    else:", *from_model]
        for f, v in zip(schema["fields"], values, strict=True):
            self.path = f"{schema['name']}.{f['name']}"
            lines += self.emit(f["type"], v, "    ", own_ns)
        if len(lines) == 1:
            lines.append("    pass")
        self.functions.append("\n".join(lines) + "\n")
        return name


def _plain_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def compile_writer(schema: Mapping[str, Any]) -> Writer:
    """A function: record dict -> Avro binary body (no framing), for a record schema given as
    JSON-like data (the `.avsc` text parsed by `json.loads`). Raises `UnsupportedSchema`."""
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise UnsupportedSchema("the top level must be a record")
    c = _Compiler()
    full = full_name(schema, str(schema.get("namespace", "")))
    c.named[full] = schema
    top = c.function_for(schema, full, full.rsplit(".", 1)[0] if "." in full else "")
    source = "\n".join(c.functions)
    source += (
        f"\ndef write(rec):\n    buf = bytearray()\n    {top}(buf, rec)\n    return bytes(buf)\n"
    )
    env = dict(c.env)
    exec(compile(source, f"<avro writer {schema['name']}>", "exec"), env)
    writer: Writer = env["write"]
    return writer
