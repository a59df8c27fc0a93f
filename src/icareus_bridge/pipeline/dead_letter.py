"""Dead letters: the record a stage writes to the DLQ topic when it gives up on an input.

The original key and value bytes travel untouched; everything about the failure is in `dlq.*`
headers (ARCHITECTURE.md, "Delivery"). Used by the planner (stages decode, validate, plan) and
the dispatcher (stage dispatch); `replay` reads the headers back with `parse_dead_letter_headers`.
Times are ISO-8601 UTC with milliseconds; numbers are decimal text; all values are UTF-8.

A record the broker refused (too large, invalid) becomes a dead letter too
(`refused_dead_letter`), with `dlq.refused.*` headers; when even that is refused, a truncated one:
no value, the key cut to 1 KiB, still naming the record (`dlq.record.schema` and its id, e.g.
`dlq.request.id`) and where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Stage = Literal["decode", "validate", "plan", "dispatch"]
Header = tuple[str, bytes]

STAGE = "dlq.stage"
REASON = "dlq.reason"
ERROR_CLASS = "dlq.error.class"
ERROR_MESSAGE = "dlq.error.message"
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
CONSUMER_GROUP = "dlq.consumer.group"
ATTEMPTS = "dlq.attempts"
FIRST_FAILURE_AT = "dlq.first.failure.at"
LAST_FAILURE_AT = "dlq.last.failure.at"
HTTP_STATUS = "dlq.http.status"
RESPONSE_EXCERPT = "dlq.response.excerpt"
REPLAY_COUNT = "dlq.replay.count"
PARKED_BEHIND = "dlq.parked.behind"
REFUSED_TOPIC = "dlq.refused.topic"  # where the refused record was to be written
REFUSED_PARTITION = "dlq.refused.partition"
RECORD_BYTES = "dlq.record.bytes"  # size of the refused record's value
RECORD_SCHEMA = "dlq.record.schema"  # e.g. ProvisioningRequest
TRUNCATED = "dlq.truncated"  # what was cut: "value" or "value,key"

MAX_TEXT_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the dead-lettered record was read: topic, partition, offset and its timestamp."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def iso_millis(epoch_ms: int) -> str:
    """`2026-11-26T10:28:24.123Z` for an epoch-milliseconds time."""
    dt = datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_iso_millis(text: str) -> int:
    """The inverse of `iso_millis` (also accepts any ISO-8601 time with an offset)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _truncate(text: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return raw
    # Cut on a character boundary so the header stays valid UTF-8.
    return raw[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def dead_letter_headers(
    stage: Stage,
    reason: str,
    error: BaseException | str | None,
    origin: Origin,
    group: str,
    *,
    now_ms: int,
    attempts: int = 1,
    first_failure_at: int | None = None,
    last_failure_at: int | None = None,
    http_status: int | None = None,
    response_excerpt: str | None = None,
    replay_count: int = 0,
    parked_behind: str | None = None,
) -> list[Header]:
    """All `dlq.*` headers for one dead letter, in a stable order.

    `error` gives `dlq.error.class` and `dlq.error.message` (≤ 1 KiB); a plain string is a
    message without a class. `response_excerpt` must already be redacted; it is cut to 1 KiB.
    Failure times default to `now_ms` (the caller's clock: this function reads none).
    """
    if isinstance(error, BaseException):
        error_class = type(error).__name__
        error_message = str(error)
    else:
        error_class = ""
        error_message = error or ""
    headers: list[Header] = [
        (STAGE, stage.encode()),
        (REASON, reason.encode()),
        (ERROR_CLASS, error_class.encode()),
        (ERROR_MESSAGE, _truncate(error_message)),
        (ORIGINAL_TOPIC, origin.topic.encode()),
        (ORIGINAL_PARTITION, str(origin.partition).encode()),
        (ORIGINAL_OFFSET, str(origin.offset).encode()),
    ]
    if origin.timestamp_ms is not None and origin.timestamp_ms >= 0:
        headers.append((ORIGINAL_TIMESTAMP, iso_millis(origin.timestamp_ms).encode()))
    headers += [
        (CONSUMER_GROUP, group.encode()),
        (ATTEMPTS, str(attempts).encode()),
        (FIRST_FAILURE_AT, iso_millis(first_failure_at or now_ms).encode()),
        (LAST_FAILURE_AT, iso_millis(last_failure_at or now_ms).encode()),
    ]
    if http_status is not None:
        headers.append((HTTP_STATUS, str(http_status).encode()))
    if response_excerpt is not None:
        headers.append((RESPONSE_EXCERPT, _truncate(response_excerpt)))
    headers.append((REPLAY_COUNT, str(replay_count).encode()))
    if parked_behind is not None:
        headers.append((PARKED_BEHIND, parked_behind.encode()))
    return headers


def refused_dead_letter(
    *,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header] | None,
    reason: str,
    error: str,
    source: tuple[str, int, int] | None,
    stage: str,
    group: str,
    now_ms: int,
    truncated: bool,
    is_dead_letter: bool,
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """(key, value, headers) of the dead letter for a record the broker refused.

    `source` is the input record that caused it (topic, partition, offset), when known; else
    the dead letter names the refused record's own topic and partition (offset -1). A refused
    dead letter (`is_dead_letter`) keeps its own `dlq.*` headers and is always truncated.
    `truncated`: no value, the key cut to 1 KiB; the record is named by the id found in its
    value (`dlq.request.id`, `dlq.event.id`, ...) and its schema."""
    from icareus_bridge.codec import record_identity

    size = len(value) if value is not None else 0
    if is_dead_letter:
        out = [(n, v) for n, v in headers or () if n not in (TRUNCATED, RECORD_BYTES)]
        truncated = True
    else:
        origin = Origin(*source) if source is not None else Origin(topic, partition, -1)
        out = dead_letter_headers(
            stage,  # type: ignore[arg-type]  # the stage that produced the refused record
            reason,
            error,
            origin,
            group,
            now_ms=now_ms,
        )
        out += [(REFUSED_TOPIC, topic.encode()), (REFUSED_PARTITION, str(partition).encode())]
    out.append((RECORD_BYTES, str(size).encode()))
    identity = record_identity(value)
    if identity is not None:
        schema, field, ident = identity
        out += [
            (RECORD_SCHEMA, schema.encode()),
            (f"dlq.{field.replace('_', '.')}", _truncate(ident)),
        ]
    if not truncated:
        return key, value, out
    cut = ["value"]
    if key is not None and len(key) > MAX_TEXT_BYTES:
        key = key[:MAX_TEXT_BYTES]
        cut.append("key")
    out.append((TRUNCATED, ",".join(cut).encode()))
    return key, None, out


def replay_count_of(headers: Sequence[tuple[str, bytes | str | None]] | None) -> int:
    """The `dlq.replay.count` a replayed record carries back in (0 when it never was replayed)."""
    for name, value in headers or ():
        if name == REPLAY_COUNT and value is not None:
            text = value.decode() if isinstance(value, bytes) else value
            try:
                return int(text)
            except ValueError:
                return 0
    return 0


def parse_dead_letter_headers(
    headers: Iterable[tuple[str, bytes | str | None]] | None,
) -> dict[str, str]:
    """The `dlq.*` headers of a dead letter as text (last value wins), for replay and search."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        if not name.startswith("dlq.") or value is None:
            continue
        out[name] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return out
