"""What `replay` decides, without Kafka: dead letters as read from the DLQ, the filters, the
order they go back in, the loop guard, and the operator's view of one dead letter.

A dead letter is known by where it sits in the DLQ (`partition@offset`): that is what the replay
ledger records and what a republished record names in `dlq.replay.of`. A dead letter that fails
again comes back as a new DLQ record, so it has a new name and is replayable again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from icareus_bridge.pipeline import dead_letter as dl

# Refusal reasons (the summary and the dry run name them).
REFUSED_STAGE = "STAGE_NEEDS_FORCE"  # decode/validate: CRM's bad bytes would fail the same way
REFUSED_MAX_REPLAYS = "MAX_REPLAYS"  # loop guard, dlq.max_replays
REFUSED_NO_ORIGIN = "NO_ORIGIN"  # no dlq.original.topic header: nowhere to put it back
REFUSED_PARKED_BEHIND = "PARKED_BEHIND"  # its key waits for a dead letter this run leaves
FORCEABLE = frozenset({REFUSED_STAGE, REFUSED_MAX_REPLAYS})

REASON_PARKED = "PARKED"
STAGES_NEEDING_FORCE = frozenset({"decode", "validate"})

REPLAY_OF = "dlq.replay.of"
REPLAY_RUN = "dlq.replay.run"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One DLQ record: where it sits, its untouched key and value, its `dlq.*` headers, and what
    could be read from its value (request id and type, or event id; never the profile)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    request_id: str | None = None
    request_type: str | None = None
    event_id: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.partition}@{self.offset}"

    @property
    def fingerprint(self) -> str:
        """Tells this dead letter from another at the same ref (a DLQ topic deleted and
        created again starts its offsets anew): hash of key, value and failure headers."""
        h = hashlib.sha256()
        for part in (
            self.key or b"",
            self.value or b"",
            self.headers.get(dl.LAST_FAILURE_AT, "").encode(),
            self.headers.get(dl.ORIGINAL_OFFSET, "").encode(),
        ):
            h.update(len(part).to_bytes(8, "big") + part)
        return h.hexdigest()[:16]

    @property
    def subscription_id(self) -> str:
        return self.key.decode("utf-8", errors="replace") if self.key is not None else ""

    @property
    def record_id(self) -> str | None:
        """What a parked key names in `dlq.parked.behind`: request id, else event id."""
        return self.request_id or self.event_id

    @property
    def stage(self) -> str:
        return self.headers.get(dl.STAGE, "")

    @property
    def reason(self) -> str:
        return self.headers.get(dl.REASON, "")

    @property
    def replay_count(self) -> int:
        return _int(self.headers.get(dl.REPLAY_COUNT)) or 0

    @property
    def parked_behind(self) -> str | None:
        return self.headers.get(dl.PARKED_BEHIND) or None

    @property
    def original_topic(self) -> str | None:
        return self.headers.get(dl.ORIGINAL_TOPIC) or None

    @property
    def original_partition(self) -> int | None:
        return _int(self.headers.get(dl.ORIGINAL_PARTITION))

    @property
    def last_failure_ms(self) -> int | None:
        text = self.headers.get(dl.LAST_FAILURE_AT)
        if not text:
            return None
        try:
            return dl.parse_iso_millis(text)
        except ValueError:
            return None

    @property
    def parks_key(self) -> bool:
        """The dispatcher parks a subscription on every request it gives up on itself."""
        return self.stage == "dispatch" and self.reason != REASON_PARKED

    def replay_headers(self, run_id: str) -> list[tuple[str, bytes]]:
        """Headers of the republished record: the replay count one up, the dead letter it came
        from, and the run that put it back."""
        return [
            (dl.REPLAY_COUNT, str(self.replay_count + 1).encode()),
            (REPLAY_OF, self.ref.encode()),
            (REPLAY_RUN, run_id.encode()),
        ]

    def view(self, refusal: str | None = None) -> dict[str, Any]:
        """The operator's view: no key material beyond the subscription id, no profile."""
        h = self.headers
        return {
            "dlq": self.ref,
            "subscription_id": self.subscription_id,
            "request_id": self.request_id,
            "request_type": self.request_type,
            "event_id": self.event_id,
            "stage": self.stage,
            "reason": self.reason,
            "attempts": _int(h.get(dl.ATTEMPTS)),
            "first_failure_at": h.get(dl.FIRST_FAILURE_AT),
            "last_failure_at": h.get(dl.LAST_FAILURE_AT),
            "http_status": _int(h.get(dl.HTTP_STATUS)),
            "error_class": h.get(dl.ERROR_CLASS) or None,
            "error_message": h.get(dl.ERROR_MESSAGE) or None,
            "original": f"{self.original_topic}/{h.get(dl.ORIGINAL_PARTITION)}"
            f"@{h.get(dl.ORIGINAL_OFFSET)}",
            "replay_count": self.replay_count,
            "parks_key": self.parks_key,
            "parked_behind": self.parked_behind,
            "refused": refusal,
        }


def _int(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Filters:
    """The operator's filters; all given ones must match (AND). Times are epoch ms, `until`
    exclusive, on the dead letter's last failure time."""

    since_ms: int | None = None
    until_ms: int | None = None
    subscription: str | None = None
    reason: str | None = None
    stage: str | None = None
    request_id: str | None = None

    def matches(self, d: DeadLetter) -> bool:
        if self.subscription is not None and d.subscription_id != self.subscription:
            return False
        if self.reason is not None and d.reason != self.reason:
            return False
        if self.stage is not None and d.stage != self.stage:
            return False
        if self.request_id is not None and self.request_id not in (d.request_id, d.event_id):
            return False
        if self.since_ms is not None or self.until_ms is not None:
            at = d.last_failure_ms
            if at is None:
                return False
            if self.since_ms is not None and at < self.since_ms:
                return False
            if self.until_ms is not None and at >= self.until_ms:
                return False
        return True


@dataclass(slots=True)
class Selection:
    """What one replay run does: `replay` in order; `refused` with the reason; the rest skipped
    (already replayed by an earlier run, not matched by a filter, beyond --limit)."""

    replay: list[DeadLetter] = field(default_factory=list)
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)
    already_replayed: int = 0
    not_matched: int = 0
    over_limit: int = 0

    def refused_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(reason for _, reason in self.refused).items()))


def replay_order(dead_letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """DLQ order (per subscription that is the order they failed in), except that a dead letter
    which parks its key goes before the dead letters parked behind it: when it failed again it
    came back to the DLQ after them, yet the dispatcher unparks only on it."""
    ordered = sorted(dead_letters, key=lambda d: (d.partition, d.offset))
    groups: dict[str, list[DeadLetter]] = {}
    for d in ordered:
        groups.setdefault(d.subscription_id, []).append(d)
    for sub, group in groups.items():
        groups[sub] = _parkers_first(group)
    cursor = dict.fromkeys(groups, 0)
    out: list[DeadLetter] = []
    for d in ordered:  # each group keeps the slots it had, filled in its own order
        sub = d.subscription_id
        out.append(groups[sub][cursor[sub]])
        cursor[sub] += 1
    return out


def _parkers_first(group: list[DeadLetter]) -> list[DeadLetter]:
    out = list(group)
    for parker in [d for d in group if d.parks_key and d.record_id is not None]:
        first_behind = next(
            (i for i, d in enumerate(out) if d.parked_behind == parker.record_id), None
        )
        at = out.index(parker)
        if first_behind is not None and first_behind < at:
            out.pop(at)
            out.insert(first_behind, parker)
    return out


def replayed_refs(
    dead_letters: Iterable[DeadLetter], ledger: Mapping[str, Mapping[str, Any]]
) -> set[str]:
    """The refs of `dead_letters` that the ledger says were replayed: same ref and, when the
    entry has one, the same fingerprint."""
    out: set[str] = set()
    for d in dead_letters:
        entry = ledger.get(d.ref)
        if entry is not None and entry.get("fp") in (None, d.fingerprint):
            out.add(d.ref)
    return out


def select(
    dead_letters: Iterable[DeadLetter],
    replayed: set[str],
    filters: Filters,
    *,
    max_replays: int,
    force: bool = False,
    limit: int | None = None,
    topics: Mapping[str, int] | None = None,
) -> Selection:
    """Decide, in replay order, which dead letters go back and which are refused and why.

    `replayed` holds the refs an earlier run put back (the ledger). Refused: stage decode or
    validate, or replayed `max_replays` times already, unless `force`; no original topic; or
    parked behind a dead letter that stays in the DLQ (not matched, refused, beyond the limit):
    the dispatcher would only park it again. `limit` bounds the number replayed; a dead letter
    parked behind one beyond the limit waits with it. `topics` (name -> partitions), when given,
    refuses a dead letter whose original topic is not among them.
    """
    sel = Selection()
    pending: list[DeadLetter] = []
    for d in dead_letters:
        if d.ref in replayed:
            sel.already_replayed += 1
        else:
            pending.append(d)
    # A parking dead letter still in the DLQ, by the id its followers name.
    parkers = {d.record_id: d for d in pending if d.parks_key and d.record_id is not None}
    going: set[str] = set()
    waiting: set[str] = set()  # beyond the limit
    for d in replay_order(pending):
        if not filters.matches(d):
            sel.not_matched += 1
            continue
        refusal = _refusal(d, max_replays=max_replays, force=force)
        if refusal is None and topics is not None and d.original_topic not in topics:
            refusal = REFUSED_NO_ORIGIN
        behind = parkers.get(d.parked_behind) if d.parked_behind else None
        if refusal is None and behind is not None and behind.ref not in going:
            if behind.ref in waiting:
                sel.over_limit += 1
                waiting.add(d.ref)
                continue
            refusal = REFUSED_PARKED_BEHIND
        if refusal is not None:
            sel.refused.append((d, refusal))
            continue
        if limit is not None and len(sel.replay) >= limit:
            sel.over_limit += 1
            waiting.add(d.ref)
            continue
        sel.replay.append(d)
        going.add(d.ref)
    return sel


def _refusal(d: DeadLetter, *, max_replays: int, force: bool) -> str | None:
    if d.original_topic is None:
        return REFUSED_NO_ORIGIN
    if force:
        return None
    if d.stage in STAGES_NEEDING_FORCE:
        return REFUSED_STAGE
    if d.replay_count >= max_replays:
        return REFUSED_MAX_REPLAYS
    return None


def totals(views: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by stage and by stage:reason, for the end of a dry run."""
    by_stage: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    n = 0
    for v in views:
        n += 1
        by_stage[str(v["stage"])] += 1
        by_reason[f"{v['stage']}:{v['reason']}"] += 1
    return {
        "dead_letters": n,
        "by_stage": dict(sorted(by_stage.items())),
        "by_reason": dict(sorted(by_reason.items())),
    }


__all__ = [
    "DeadLetter",
    "Filters",
    "Selection",
    "replay_order",
    "replayed_refs",
    "select",
    "totals",
]
