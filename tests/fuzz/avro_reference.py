"""A strict Avro binary reader written for clarity, not speed, as the reference the compiled
reader (`icareus_bridge.codec.reader`) is held to, plus random values and byte mutations for
the schemas of `schemas/`.

Strict means the Avro specification as Java's reader applies it: a long is at most 10 bytes
and fits 64 bits, an int at most 5 bytes and fits 32 bits, a boolean byte is 0 or 1, an enum
index and a union branch are in range. fastavro's C reader is lenient on exactly these
(`Refused.lenient`): it wraps numbers around, reads any non-zero byte as true and counts a
negative enum index or union branch from the end."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1

# Reasons fastavro does not refuse (it returns some value instead).
LENIENT = frozenset({"long_range", "int_range", "boolean", "enum_negative", "union_negative"})


class Refused(Exception):
    """Bytes the strict reader refuses; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def lenient(self) -> bool:
        return self.reason in LENIENT


def _full_name(schema: Mapping[str, Any], namespace: str) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


class StrictReader:
    """`StrictReader(schema).read(data, pos)` -> (value as fastavro gives it, end position)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.named: dict[str, Any] = {}
        self.data = b""

    def read(self, data: bytes, pos: int = 0) -> tuple[Any, int]:
        self.data = data
        value, end = self._value(self.schema, pos, str(self.schema.get("namespace", "")))
        return value, end

    def _byte(self, pos: int) -> int:
        if pos >= len(self.data):
            raise Refused("eof")
        return self.data[pos]

    def _varint(self, pos: int) -> tuple[int, int, int]:
        """(zig-zag decoded value, next position, bytes used), any precision."""
        n = shift = used = 0
        while True:
            b = self._byte(pos)
            pos += 1
            used += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return (n >> 1) ^ -(n & 1), pos, used
            if used > 64:  # garbage: stop reading; it is out of range anyway
                raise Refused("long_range")

    def _long(self, pos: int) -> tuple[int, int]:
        value, pos, used = self._varint(pos)
        if used > 10 or not LONG_MIN <= value <= LONG_MAX:
            raise Refused("long_range")
        return value, pos

    def _int(self, pos: int) -> tuple[int, int]:
        value, pos, used = self._varint(pos)
        if used > 10 or not LONG_MIN <= value <= LONG_MAX:
            raise Refused("long_range")
        if used > 5 or not INT_MIN <= value <= INT_MAX:
            raise Refused("int_range")
        return value, pos

    def _value(self, schema: Any, pos: int, ns: str) -> tuple[Any, int]:
        if isinstance(schema, list):
            branch, pos = self._long(pos)
            if branch < 0:
                raise Refused("union_negative")
            if branch >= len(schema):
                raise Refused("union_range")
            return self._value(schema[branch], pos, ns)
        if isinstance(schema, str):
            if schema == "null":
                return None, pos
            if schema == "boolean":
                b = self._byte(pos)
                if b > 1:
                    raise Refused("boolean")
                return b == 1, pos + 1
            if schema == "long":
                return self._long(pos)
            if schema == "int":
                return self._int(pos)
            if schema == "string":
                n, pos = self._long(pos)
                if n < 0:
                    raise Refused("negative_length")
                if pos + n > len(self.data):
                    raise Refused("eof")
                try:
                    return self.data[pos : pos + n].decode("utf-8"), pos + n
                except UnicodeDecodeError as exc:
                    raise Refused("utf8") from exc
            full = schema if "." in schema else f"{ns}.{schema}" if ns else schema
            named = self.named[full]
            return self._value(named, pos, full.rsplit(".", 1)[0] if "." in full else "")
        t = schema["type"]
        if t == "record":
            full = _full_name(schema, ns)
            self.named[full] = schema
            own = full.rsplit(".", 1)[0] if "." in full else ""
            out: dict[str, Any] = {}
            for f in schema["fields"]:
                out[f["name"]], pos = self._value(f["type"], pos, own)
            return out, pos
        if t == "enum":
            full = _full_name(schema, ns)
            self.named[full] = schema
            index, pos = self._long(pos)
            if index < 0:
                raise Refused("enum_negative")
            if index >= len(schema["symbols"]):
                raise Refused("enum_range")
            return schema["symbols"][index], pos
        if t == "array":
            items: list[Any] = []
            while True:
                count, pos = self._long(pos)
                if count == 0:
                    return items, pos
                if count < 0:
                    count = -count
                    _size, pos = self._long(pos)
                for _ in range(count):
                    item, pos = self._value(schema["items"], pos, ns)
                    items.append(item)
        return self._value(t, pos, ns)


# --- random values of a schema ----------------------------------------------------------------

_EDGE_LONGS = (
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    INT_MAX,
    INT_MIN,
    INT_MAX + 1,
    INT_MIN - 1,
    LONG_MAX,
    LONG_MIN,
    LONG_MAX - 1,
    LONG_MIN + 1,
)
_EDGE_INTS = (0, 1, -1, 63, 64, -64, -65, INT_MAX, INT_MIN, INT_MAX - 1, INT_MIN + 1)
_ALPHABET = "abcXYZ019 -_.@ÄöÜßΕλένη中文🙂\u0000\t\n\u202e\ufeff"


def random_text(rng: random.Random, max_len: int = 80) -> str:
    n = rng.choice((0, 1, 2, rng.randrange(max_len + 1)))
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def random_long(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(_EDGE_LONGS)
    if pick < 0.6:
        return rng.randrange(-100, 1000)
    bits = rng.randrange(1, 64)
    return rng.randrange(-(1 << bits), 1 << bits)


def random_int(rng: random.Random) -> int:
    if rng.random() < 0.3:
        return rng.choice(_EDGE_INTS)
    bits = rng.randrange(1, 32)
    return rng.randrange(-(1 << bits), 1 << bits)


class ValueMaker:
    """Random values of `schema`, shaped as fastavro writes them (dicts, lists, symbols)."""

    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        max_items: int = 4,
        text: Callable[[random.Random], str] = random_text,
    ) -> None:
        self.schema = schema
        self.named: dict[str, Any] = {}
        self.max_items = max_items
        self.text = text

    def make(self, rng: random.Random) -> Any:
        return self._value(self.schema, rng, str(self.schema.get("namespace", "")))

    def _value(self, schema: Any, rng: random.Random, ns: str) -> Any:
        if isinstance(schema, list):
            return self._value(rng.choice(schema), rng, ns)
        if isinstance(schema, str):
            simple: dict[str, Callable[[], Any]] = {
                "null": lambda: None,
                "boolean": lambda: rng.random() < 0.5,
                "long": lambda: random_long(rng),
                "int": lambda: random_int(rng),
                "string": lambda: self.text(rng),
            }
            if schema in simple:
                return simple[schema]()
            full = schema if "." in schema else f"{ns}.{schema}" if ns else schema
            return self._value(self.named[full], rng, full.rsplit(".", 1)[0])
        t = schema["type"]
        if t == "record":
            full = _full_name(schema, ns)
            self.named[full] = schema
            own = full.rsplit(".", 1)[0] if "." in full else ""
            return {f["name"]: self._value(f["type"], rng, own) for f in schema["fields"]}
        if t == "enum":
            self.named[_full_name(schema, ns)] = schema
            return rng.choice(schema["symbols"])
        if t == "array":
            return [
                self._value(schema["items"], rng, ns)
                for _ in range(rng.randrange(self.max_items + 1))
            ]
        return self._value(t, rng, ns)


# --- byte mutations -----------------------------------------------------------------------------

_SPECIAL = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
_OVERLONG = (
    b"\xff" * 9 + b"\x01",  # the smallest long (-2^63)
    b"\xfe" + b"\xff" * 8 + b"\x01",  # the largest long (2^63 - 1)
    b"\x80" * 9 + b"\x02",  # 2^64: over 64 bits
    b"\xfe" + b"\xff" * 8 + b"\x7f",  # far over 64 bits
    b"\x82" + b"\x80" * 9 + b"\x00",  # 1 in 11 bytes
    b"\x80\x80\x80\x80\x10",  # 2^31 as zig-zag: over 32 bits
    b"\x80\x80\x80\x80\x80\x00",  # 0 in 6 bytes
)


def mutate(data: bytes, rng: random.Random, *, keep: int = 0) -> bytes:
    """1-4 random edits of `data` after its first `keep` bytes (e.g. a framing header)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size = len(buf) - keep
        at = keep + (rng.randrange(size) if size > 0 else 0)
        op = rng.randrange(8)
        if op == 0 and size > 0:
            buf[at] = rng.randrange(256)
        elif op == 1 and size > 0:
            buf[at] = rng.choice(_SPECIAL)
        elif op == 2:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and size > 0:
            del buf[at : at + rng.randint(1, 8)]
        elif op == 4:
            del buf[at:]
        elif op == 5 and size > 0:
            end = min(len(buf), at + rng.randint(1, 32))
            buf[at:at] = buf[at:end]
        elif op == 6:
            buf[at:at] = rng.choice(_OVERLONG)
        elif size > 0:
            buf[at] ^= 1 << rng.randrange(8)
    return bytes(buf)
