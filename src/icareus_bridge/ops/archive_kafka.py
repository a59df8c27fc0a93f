"""The Kafka side of `icareus-bridge archive` in archive terms: the results topic read up to the
cut-off, the requests that belong to them, the committed positions of consumer groups, and
DeleteRecords. The Kafka calls themselves are `kafka.archive_io`'s."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from icareus_bridge.codec import REQUEST, RESULT, Codec, DecodeError, DecodeReason
from icareus_bridge.config import Settings
from icareus_bridge.kafka.archive_io import ArchiveKafka, KafkaUnreachable


class TopicMissing(Exception):
    """A configured topic does not exist; the message names the config key."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One record read from Kafka: where it lay, its Kafka timestamp, its decoded value."""

    partition: int
    offset: int
    timestamp: int
    value: dict[str, Any]


@dataclass
class ResultsRead:
    records: list[Fetched] = field(default_factory=list)
    # partition -> offset of a result that does not decode (the partition stops before it)
    undecodable: dict[int, tuple[int, str]] = field(default_factory=dict)


@dataclass
class RequestsRead:
    found: dict[str, Fetched] = field(default_factory=dict)  # request id -> the request
    # partition -> (offset, request id or None when it does not decode), in offset order;
    # only collected when asked for (the deletion of requests needs it)
    log: dict[int, list[tuple[int, str | None]]] = field(default_factory=dict)
    # partition -> the offset after the last record read
    end: dict[int, int] = field(default_factory=dict)


class Cluster:
    """The Kafka side of one archive run, with the broker checked at once: the topics it must
    find, and the results and requests read as archive records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.archive.kafka_timeout_seconds
        self.kafka = ArchiveKafka(settings.kafka, self.timeout)
        self.partitions = self.kafka.partitions

    def require(self, key: str, topic: str) -> list[int]:
        """The partition numbers of `topic`, the value of config key `key`."""
        n = self.partitions.get(topic)
        if not n:
            raise TopicMissing(f"{key}: topic {topic} does not exist on the broker")
        return list(range(n))

    def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        return self.kafka.watermarks(topic, partitions)

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The group's committed offset per partition of `topic`; None where it has none."""
        return self.kafka.committed(group, topic, partitions)

    def delete_before(self, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """Every record of each partition before its offset leaves the log (DeleteRecords).
        Returns the new low watermark per partition."""
        return self.kafka.delete_before(topic, offsets)

    # -- reading -----------------------------------------------------------------------------

    def read_results(
        self, codec: Codec, topic: str, start: dict[int, int], cutoff_ms: int
    ) -> ResultsRead:
        """Every committed result from `start` per partition whose Kafka timestamp is at or
        before the cut-off, stopping each partition at its first younger record (so what is
        archived of a partition is always one run of offsets, and the next run goes on from
        there)."""
        out = ResultsRead()

        def take(p: int, offset: int, ts: int, value: bytes | None) -> bool:
            if ts > cutoff_ms:
                return False
            try:
                name, obj = codec.decode(value or b"")
                if name != RESULT:
                    raise DecodeError(
                        DecodeReason.UNKNOWN_SCHEMA, f"a {name} record on the results topic"
                    )
            except DecodeError as exc:
                out.undecodable[p] = (offset, str(exc))
                return False
            out.records.append(Fetched(p, offset, ts, obj))
            return True

        self.kafka.read(topic, start, take)
        return out

    def read_requests(
        self, codec: Codec, topic: str, partitions: list[int], wanted: set[str], keep_log: bool
    ) -> RequestsRead:
        """The requests of `wanted` (by request id) found on `topic`, read from the start of the
        log to its end. A request replayed from the dead-letter topic is on the topic twice;
        the later copy is the one that ran."""
        out = RequestsRead()
        marks = self.watermarks(topic, partitions)

        def take(p: int, offset: int, ts: int, value: bytes | None) -> bool:
            try:
                name, obj = codec.decode(value or b"")
                request_id = obj["request_id"] if name == REQUEST else None
            except DecodeError:
                request_id = None
            if keep_log:
                out.log.setdefault(p, []).append((offset, request_id))
            if request_id is not None and request_id in wanted:
                out.found[request_id] = Fetched(p, offset, ts, obj)
            return True

        out.end = self.kafka.read(topic, {p: marks[p][0] for p in partitions}, take)
        return out


__all__ = [
    "Cluster",
    "Fetched",
    "KafkaUnreachable",
    "RequestsRead",
    "ResultsRead",
    "TopicMissing",
]
