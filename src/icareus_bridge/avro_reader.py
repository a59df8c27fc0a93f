"""Readers compiled from an Avro schema for the codec's hot path: the planner decodes every event
with the current event schema, so that one schema gets straight-line Python that reads the
binary body and builds the domain models directly (the schema has already typed every value).
fastavro stays the reader for everything else (older writer versions, other records) and the
reference this reader is tested against."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Reader = Callable[[bytes, int], tuple[Any, int]]

_PRELUDE = """
def _long(data, pos):
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos
"""


class _Compiler:
    def __init__(
        self,
        builders: Mapping[str, Callable[[dict[str, Any]], Any]],
        enums: Mapping[str, Sequence[Any]],
        sequence: Callable[[list[Any]], Any],
    ) -> None:
        self.builders = builders
        self.enums = enums
        self.env: dict[str, Any] = {"_seq": sequence}
        self.functions: list[str] = []
        self.records: dict[str, str] = {}  # full name -> function name
        self.named: dict[str, Any] = {}
        self.inlining: set[str] = set()
        self.counter = 0

    def tmp(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    @staticmethod
    def full_name(schema: Mapping[str, Any], namespace: str) -> str:
        name = str(schema["name"])
        if "." in name:
            return name
        ns = schema.get("namespace", namespace)
        return f"{ns}.{name}" if ns else name

    def long(self, out: str, ind: str) -> list[str]:
        return [
            f"{ind}b = data[pos]",
            f"{ind}if b < 128:",
            f"{ind}    {out} = (b >> 1) ^ -(b & 1)",
            f"{ind}    pos += 1",
            f"{ind}else:",
            f"{ind}    {out}, pos = _long(data, pos)",
        ]

    def value(self, schema: Any, out: str, ind: str, namespace: str) -> list[str]:
        """Lines that read one value of `schema` into the local `out`."""
        if isinstance(schema, str):
            if schema in ("long", "int"):
                return self.long(out, ind)
            if schema == "string":
                n = self.tmp()
                return [
                    *self.long(n, ind),
                    f"{ind}end = pos + {n}",
                    f"{ind}if {n} < 0 or end > size:",
                    f"{ind}    raise EOFError('string runs past the end')",
                    f"{ind}{out} = data[pos:end].decode()",
                    f"{ind}pos = end",
                ]
            if schema == "boolean":
                return [f"{ind}{out} = data[pos] == 1", f"{ind}pos += 1"]
            if schema == "null":
                return [f"{ind}{out} = None"]
            full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
            if full in self.named:
                return self.value(self.named[full], out, ind, namespace)
            raise ValueError(f"unsupported Avro type {schema!r}")
        if isinstance(schema, list):
            idx = self.tmp()
            lines = self.long(idx, ind)
            for k, branch in enumerate(schema):
                lines.append(f"{ind}{'if' if k == 0 else 'elif'} {idx} == {k}:")
                lines += self.value(branch, out, ind + "    ", namespace)
            lines += [f"{ind}else:", f"{ind}    raise IndexError('union branch out of range')"]
            return lines
        t = schema["type"]
        if t == "record":
            full = self.full_name(schema, namespace)
            if full in self.inlining:  # a recursive type: call its own function
                fn = self.record(schema, namespace)
                return [f"{ind}{out}, pos = {fn}(data, pos, size)"]
            return self.inline_record(schema, full, out, ind)
        if t == "enum":
            full = self.full_name(schema, namespace)
            self.named[full] = schema
            symbols_name = f"E{len(self.env)}"
            self.env[symbols_name] = tuple(self.enums.get(full, schema["symbols"]))
            idx = self.tmp()
            return [
                *self.long(idx, ind),
                f"{ind}if {idx} < 0:",
                f"{ind}    raise IndexError('negative enum index')",
                f"{ind}{out} = {symbols_name}[{idx}]",
            ]
        if t == "array":
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
        if t in ("long", "int", "string", "boolean", "null"):
            return self.value(t, out, ind, namespace)
        raise ValueError(f"unsupported Avro type {t!r}")

    def builder(self, full: str) -> str:
        name = f"B{len(self.env)}_{full.rsplit('.', 1)[-1]}"
        self.env[name] = self.builders.get(full, dict)
        return name

    def inline_record(self, schema: Mapping[str, Any], full: str, out: str, ind: str) -> list[str]:
        # Inline, not a call per record: no call and no (value, pos) tuple per array element.
        self.named[full] = schema
        self.inlining.add(full)
        ns = full.rsplit(".", 1)[0] if "." in full else ""
        lines: list[str] = []
        fields = []
        for f in schema["fields"]:
            local = self.tmp()
            lines += self.value(f["type"], local, ind, ns)
            fields.append(f"{f['name']!r}: {local}")
        self.inlining.discard(full)
        lines.append(f"{ind}{out} = {self.builder(full)}({{{', '.join(fields)}}})")
        return lines

    def record(self, schema: Mapping[str, Any], namespace: str) -> str:
        full = self.full_name(schema, namespace)
        if full in self.records:
            return self.records[full]
        fn = f"r{len(self.records)}_{full.rsplit('.', 1)[-1]}"
        self.records[full] = fn
        was_inlining = full in self.inlining
        self.inlining.add(full)
        body = self.inline_record(schema, full, "value", "    ")
        if was_inlining:
            self.inlining.add(full)
        self.functions.append(
            "\n".join([f"def {fn}(data, pos, size):", *body, "    return value, pos"])
        )
        return fn


def compile_reader(
    schema: Mapping[str, Any],
    *,
    builders: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
    enums: Mapping[str, Sequence[Any]] | None = None,
    sequence: Callable[[list[Any]], Any] = tuple,
) -> Reader:
    """A reader of binary Avro bodies written with exactly `schema` (no resolution).

    `builders` maps a record's full name to what builds it from its fields (default: dict);
    `enums` maps an enum's full name to the values standing for its symbols (default: the
    symbol strings); arrays become `sequence(list)`. The reader raises EOFError, IndexError or
    UnicodeDecodeError on bytes that do not decode; the caller checks for trailing bytes."""
    c = _Compiler(builders or {}, enums or {}, sequence)
    top = c.record(schema, str(schema.get("namespace", "")))
    source = _PRELUDE + "\n\n" + "\n\n\n".join(c.functions) + "\n"
    env = dict(c.env)
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), env)
    record_reader = env[top]

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        result: tuple[Any, int] = record_reader(data, pos, len(data))
        return result

    return read


__all__ = ["Reader", "compile_reader"]
