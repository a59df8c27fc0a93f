"""What the bridge's topics say about one subscription, read straight from Kafka for the operator
commands (`status`, `reset`): its last state record and parked-key marker (state topic), its
dead letters (DLQ) and its latest results. No running bridge is needed.

Where to look: the planner writes a subscription's state to the partition number of its input
record, the dispatcher its parked marker and results to the partition number of its requests
(the same number), and dead letters go keyed (murmur2). So the state topic is read first in the
partition Java's default partitioner gives the key (where CRM's keyed records land), then, if
the key is not there, in the other partitions; results are read in the partition the state was
found in, from the end backwards in bounded windows; dead letters in the key's murmur2 partition
of the DLQ. All reads are read_committed and stop at the partition's end as the read starts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from icareus_bridge.codec import Codec, DecodeError
from icareus_bridge.config import Settings
from icareus_bridge.core.model import ProvisioningResult, SubscriptionRecord
from icareus_bridge.kafka.scan import (
    Found,
    KafkaUnreachable,
    PartitionReader,
    Range,
    default_partition,
)
from icareus_bridge.pipeline.dead_letter import parse_dead_letter_headers
from icareus_bridge.pipeline.parking import (
    ParkedKey,
    decode_marker,
    is_parked_marker,
    marker_key,
)

# Results are read backwards from the end of the partition in windows of this many offsets,
# until enough of the subscription's results are found or this many offsets were read.
RESULTS_WINDOW = 20_000
RESULTS_MAX_SCAN = 400_000


class UnknownSubscription(Exception):
    """The state topic holds no record of the subscription."""

    def __init__(self, subscription_id: str, detail: str = "") -> None:
        super().__init__(
            f"unknown subscription {subscription_id!r}: the bridge holds no state for it"
            + (f" ({detail})" if detail else "")
        )
        self.subscription_id = subscription_id


@dataclass(frozen=True, slots=True)
class KnownState:
    """A subscription's last committed state record and where it is."""

    record: SubscriptionRecord
    partition: int
    offset: int
    timestamp_ms: int | None
    parked: ParkedKey | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter of the subscription, from its `dlq.*` headers."""

    partition: int
    offset: int
    stage: str
    reason: str
    last_failure_at: str | None
    parked_behind: str | None
    replay_count: int


@dataclass(frozen=True, slots=True)
class SeenResult:
    result: ProvisioningResult
    offset: int
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class ResultsWindow:
    """Which offsets of the results partition were read for the latest results."""

    partition: int
    from_offset: int | None  # None: the partition held no records
    to_offset: int | None  # None: its end as the read got there
    complete: bool  # the whole partition was read


@dataclass(slots=True)
class SubscriptionFacts:
    state: KnownState
    dead_letters: list[DeadLetter] = field(default_factory=list)
    results: list[SeenResult] = field(default_factory=list)  # newest last
    results_window: ResultsWindow | None = None
    undecodable_results: int = 0


class KnownStates:
    """Every subscription of the state topic, in partition and key order."""

    def __init__(
        self,
        codec: Codec,
        live: dict[tuple[int, bytes], tuple[int, int | None, bytes | None]],
        markers: dict[tuple[int, bytes], bytes | None],
    ) -> None:
        self._codec = codec
        self._live = live
        self._markers = markers

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[KnownState]:
        for (p, key), (offset, ts, value) in sorted(self._live.items()):
            record = self._codec.decode_state(value)
            if record is None:
                continue
            marker_k = marker_key(key.decode("utf-8", errors="replace"))
            marker = self._markers.get((p, marker_k))
            parked = decode_marker(marker_k, marker)[1] if marker is not None else None
            yield KnownState(record, p, offset, ts, parked)


class StateLookup:
    """Reads a subscription's facts from the bridge's topics (context manager)."""

    def __init__(
        self, settings: Settings, *, codec: Codec | None = None, timeout: float = 10.0
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.codec = codec if codec is not None else Codec.from_settings(settings)
        self.reader = PartitionReader(settings.kafka, timeout=timeout)
        self._counts: dict[str, int | None] = {}

    def __enter__(self) -> StateLookup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.reader.close()

    def partitions(self, topic: str) -> int | None:
        """Partition count (cached); None when the topic does not exist."""
        if topic not in self._counts:
            self._counts[topic] = self.reader.partitions(topic)
        return self._counts[topic]

    def probe(self) -> None:
        """Raise `KafkaUnreachable` now rather than in the middle of a command."""
        self.partitions(self.topics.state)

    # --- the state record -------------------------------------------------------------------

    def find(self, subscription_id: str) -> KnownState:
        """The subscription's state and parked marker; `UnknownSubscription` if none."""
        key, first, n = self._state_partition(subscription_id)
        order = [first] + [p for p in range(n) if p != first]
        # The likely partition alone first: one partition of a large topic is what 3 s allow.
        for batch in ([order[0]], order[1:]):
            if not batch:
                continue
            found = self.reader.scan(
                [Range(self.topics.state, p) for p in batch], {key, marker_key(subscription_id)}
            )
            state = self._state_of(subscription_id, found)
            if state is not None:
                return state
        raise UnknownSubscription(subscription_id)

    def _state_partition(self, subscription_id: str) -> tuple[bytes, int, int]:
        """The subscription's key, the state partition it hashes to, and the partition count;
        `UnknownSubscription` when the state topic does not exist."""
        n = self.partitions(self.topics.state)
        if n is None:
            raise UnknownSubscription(
                subscription_id, f"state topic {self.topics.state} (topics.state) does not exist"
            )
        key = subscription_id.encode("utf-8")
        return key, default_partition(key, n), n

    def _state_of(self, subscription_id: str, found: list[Found]) -> KnownState | None:
        key = subscription_id.encode("utf-8")
        last: dict[int, Found] = {}
        parked: dict[int, ParkedKey | None] = {}
        for rec in found:  # offset order per partition: later records win
            if rec.key == key:
                last[rec.partition] = rec
            elif is_parked_marker(rec.key):
                parked[rec.partition] = decode_marker(rec.key, rec.value)[1]
        for p, rec in last.items():
            if rec.value is None:
                continue  # a tombstone: forgotten
            record = self.codec.decode_state(rec.value)
            if record is None:
                continue
            return KnownState(record, p, rec.offset, rec.timestamp_ms, parked.get(p))
        return None

    def all_states(self) -> KnownStates:
        """Every known subscription: the whole state topic is read first (values stay
        encoded, about 0.6 GiB per million subscriptions), then decoded one at a time."""
        n = self.partitions(self.topics.state) or 0
        latest: dict[tuple[int, bytes], tuple[int, int | None, bytes | None]] = {}
        markers: dict[tuple[int, bytes], bytes | None] = {}

        def visit(p: int, offset: int, ts: int | None, key: bytes, value: bytes | None) -> None:
            if is_parked_marker(key):
                markers[(p, key)] = value
            else:
                latest[(p, key)] = (offset, ts, value)

        self.reader.read_all([Range(self.topics.state, p) for p in range(n)], visit)
        live = {k: v for k, v in latest.items() if v[2] is not None}
        return KnownStates(self.codec, live, markers)

    # --- everything status shows ----------------------------------------------------------

    def facts(self, subscription_id: str, *, last_results: int = 10) -> SubscriptionFacts:
        """State, parked marker, dead letters and the latest results of one subscription.

        The likely state partition, the DLQ partition and the tail of the results partition
        are read together in one pass."""
        key, first, _ = self._state_partition(subscription_id)
        n_dlq = self.partitions(self.topics.dlq)
        n_results = self.partitions(self.topics.results)
        ranges = [Range(self.topics.state, first)]
        if n_dlq is not None:
            ranges.append(Range(self.topics.dlq, default_partition(key, n_dlq)))
        if n_results is not None and first < n_results:
            ranges.append(Range(self.topics.results, first, tail=RESULTS_WINDOW))
        found = self.reader.scan(ranges, {key, marker_key(subscription_id)})
        state_records = [f for f in found if f.topic == self.topics.state]
        state = self._state_of(subscription_id, state_records)
        tail_read = True
        if state is None:
            state = self.find_elsewhere(subscription_id, first)
            tail_read = False
        facts = SubscriptionFacts(state)
        facts.dead_letters = [
            _dead_letter(f) for f in found if f.topic == self.topics.dlq and f.key == key
        ]
        if n_results is not None and state.partition < n_results:
            results = [f for f in found if f.topic == self.topics.results and f.key == key]
            self._latest_results(facts, key, results if tail_read else None, last_results)
        return facts

    def find_elsewhere(self, subscription_id: str, skip: int) -> KnownState:
        n = self.partitions(self.topics.state) or 0
        others = [p for p in range(n) if p != skip]
        found = self.reader.scan(
            [Range(self.topics.state, p) for p in others],
            {subscription_id.encode("utf-8"), marker_key(subscription_id)},
        )
        state = self._state_of(subscription_id, found)
        if state is None:
            raise UnknownSubscription(subscription_id)
        return state

    def _latest_results(
        self, facts: SubscriptionFacts, key: bytes, found: list[Found] | None, wanted: int
    ) -> None:
        """The subscription's last `wanted` results: the partition's tail first (already read
        with the state, unless the state was found elsewhere), then older windows, twice as
        large each time, until enough are found, the partition's start or RESULTS_MAX_SCAN."""
        topic, p = self.topics.results, facts.state.partition
        if found is None:
            found = self.reader.scan([Range(topic, p, tail=RESULTS_WINDOW)], {key})
        tail_from = self.reader.first_seen.get((topic, p))
        complete = tail_from is None or tail_from == 0  # an empty partition, or all of it
        to_offset = None
        if len(found) < wanted and not complete and tail_from is not None:
            low, high = self.reader.watermarks(topic, p)
            to_offset = high
            window = RESULTS_WINDOW
            while len(found) < wanted and tail_from > low and high - tail_from < RESULTS_MAX_SCAN:
                window *= 2
                start = max(low, tail_from - window)
                older = self.reader.scan([Range(topic, p, start, tail_from)], {key})
                found = older + found
                tail_from = start
            complete = tail_from <= low
        seen: list[SeenResult] = []
        for f in found:
            if f.value is None:
                continue
            try:
                seen.append(SeenResult(self.codec.decode_result(f.value), f.offset, f.timestamp_ms))
            except DecodeError:
                facts.undecodable_results += 1
        facts.results = seen[-wanted:] if wanted > 0 else []
        facts.results_window = ResultsWindow(p, tail_from, to_offset, complete)


def _dead_letter(f: Found) -> DeadLetter:
    h = parse_dead_letter_headers(f.headers)
    try:
        replays = int(h.get("dlq.replay.count", "0"))
    except ValueError:
        replays = 0
    return DeadLetter(
        partition=f.partition,
        offset=f.offset,
        stage=h.get("dlq.stage", ""),
        reason=h.get("dlq.reason", ""),
        last_failure_at=h.get("dlq.last.failure.at"),
        parked_behind=h.get("dlq.parked.behind"),
        replay_count=replays,
    )


__all__ = [
    "DeadLetter",
    "KafkaUnreachable",
    "KnownState",
    "ResultsWindow",
    "SeenResult",
    "StateLookup",
    "SubscriptionFacts",
    "UnknownSubscription",
]
