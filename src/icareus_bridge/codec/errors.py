"""Every error of the codec, and the one reading of a validation error (pydantic's for the
configuration, msgspec's for the domain models) the bridge uses.

Bytes that cannot become a valid record raise `DecodeError`, whose `reason` becomes the dead
letter's `dlq.reason`; a record the current schema cannot hold raises `EncodeError`; a registry
that cannot answer raises `SchemaRegistryError` (retried, not dead-lettered). The compiled reader
and writer raise `OutOfRange`, `InvalidBoolean` and `UnsupportedSchema`, which the codec turns
into the errors above or into a fallback to fastavro."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

import msgspec
from pydantic import ValidationError


class DecodeReason(StrEnum):
    """Why bytes did not become a valid record; the dead letter's `dlq.reason`."""

    NOT_AVRO = "NOT_AVRO"  # neither single-object nor Confluent framing
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"  # fingerprint / schema id unknown, or unreadable by ours
    MALFORMED = "MALFORMED"  # the body does not decode with its writer schema
    INVALID = "INVALID"  # decodes, but breaks a rule of the domain model


class DecodeError(Exception):
    """Input that cannot be used. `stage` is `decode` or `validate` (the `dlq.stage` header);
    `field` names the offending field (dotted path) when there is one."""

    def __init__(self, reason: DecodeReason, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field

    @property
    def stage(self) -> str:
        return "validate" if self.reason is DecodeReason.INVALID else "decode"


class EncodeError(ValueError):
    """A record the current schema cannot hold (a long outside 64 bits, an int outside 32, a
    missing field, a value of the wrong type); the message names the record and the field."""

    def __init__(self, record: str, message: str) -> None:
        super().__init__(f"{record}: {message}")
        self.record = record


class SchemaRegistryError(Exception):
    """The schema registry could not be reached or answered badly: not the input's fault, so
    the caller retries instead of dead-lettering."""


class OutOfRange(ValueError):
    """A number an Avro long (64 bits) or int (32 bits) cannot hold. Read: a varint of more
    than 10 (int: 5) bytes or over the type's bits, which fastavro wraps around silently.
    Written (`codec/writer.py`): the message names the field."""


class InvalidBoolean(ValueError):
    """A boolean byte other than 0 or 1 (fastavro reads any non-zero byte as true)."""


class UnsupportedSchema(Exception):
    """A schema construct the writer compiler leaves to fastavro."""


# --- validation errors, read once for the codec, the configuration and `explain` ------------


class FieldProblem(NamedTuple):
    """One entry of a validation error: where, the validator's message, and what a validator
    raised (pydantic's `ctx.error`)."""

    path: tuple[str, ...]  # the location, each part as text; () for the whole object
    message: str  # pydantic's `msg`, or msgspec's message without its location
    cause: object  # the exception a validator raised (`ctx.error`), else None

    @property
    def field(self) -> str:
        """The location as a dotted path, `<root>` for the whole object."""
        return dotted(self.path)


def dotted(path: tuple[str, ...]) -> str:
    """A location as the bridge names fields: `a.b.0.c`, `<root>` when empty."""
    return ".".join(path) or "<root>"


# msgspec names one problem: "<message> - at `$.a.b[0].c`"; a missing or unknown field is named
# in the message, at the object that lacks or has it.
_AT = re.compile(r" - at `\$(?P<where>[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")
_PART = re.compile(r"\.([^.\[]+)|\[(-?\d+)\]")


def _msgspec_problem(exc: msgspec.ValidationError) -> FieldProblem:
    text = str(exc)
    at = _AT.search(text)
    message = text[: at.start()] if at else text
    path = tuple(a or b for a, b in _PART.findall(at["where"])) if at else ()
    named = _NAMED.match(message)
    if named:
        path += (named["name"],)
    return FieldProblem(path, message, None)


def field_problems(exc: ValidationError | msgspec.ValidationError) -> list[FieldProblem]:
    """Every entry of `exc` (pydantic's order; msgspec stops at its first), the first being the
    one a caller names."""
    if isinstance(exc, msgspec.ValidationError):
        return [_msgspec_problem(exc)]
    return [
        FieldProblem(
            tuple(str(p) for p in err["loc"]), err["msg"], (err.get("ctx") or {}).get("error")
        )
        for err in exc.errors()
    ]


__all__ = [
    "DecodeError",
    "DecodeReason",
    "EncodeError",
    "FieldProblem",
    "InvalidBoolean",
    "OutOfRange",
    "SchemaRegistryError",
    "UnsupportedSchema",
    "dotted",
    "field_problems",
]
