"""`icareus-bridge replay`: put dead letters back on the topic they came from, or show them.

Reads `topics.dlq` from its start (committed records only). A real run republishes each chosen
dead letter's key and value bytes untouched to `dlq.original.topic` (its original partition),
with `dlq.replay.count` one up and `dlq.replay.of` naming the dead letter (`partition@offset`).
Exactly once: the republished records and the ledger entries that say they were replayed
(`replayed:<dlq topic>:<partition>@<offset>` on the compacted `topics.replay_log`) are written in
the same Kafka transactions, under the fixed transactional id `<prefix>-replay`; a new run fences
an interrupted one (its open transaction is aborted) and reads the ledger back before choosing.
Every run leaves one audit record `run:<id>` there, which `replay --history` lists.
See docs/OPERATIONS.md, "replay".
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings, load_settings
from icareus_bridge.core.model import LifecycleEvent
from icareus_bridge.kafka.admin import KafkaRefused
from icareus_bridge.kafka.changelog import RestoreError, read_to_end
from icareus_bridge.kafka.clients import KafkaUnreachable, quiet_librdkafka
from icareus_bridge.kafka.publish import BrokerError, OutgoingRecord, TransactionalPublisher
from icareus_bridge.kafka.replay_io import (
    PartitionFailed,
    ReadIncomplete,
    StoredRecord,
    create_compacted_topic,
    probe_topics,
    read_from_start,
)
from icareus_bridge.ops.replay_model import (
    DeadLetter,
    Filters,
    Selection,
    replayed_refs,
    select,
    totals,
)
from icareus_bridge.pipeline.dead_letter import (
    iso_millis,
    parse_dead_letter_headers,
    parse_iso_millis,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_KAFKA = 4
EXIT_INTERRUPTED = 130

PROBE_SECONDS = 5.0  # Kafka unreachable is told within this
READ_TIMEOUT_SECONDS = 120.0
BATCH_RECORDS = 100  # dead letters per transaction at most
BATCH_SECONDS = 1.0  # and a transaction is committed at least this often
COMMIT_TIMEOUT_SECONDS = 30.0

LEDGER_PREFIX = "replayed:"
RUN_PREFIX = "run:"

PROG = "icareus-bridge replay"


class UsageError(Exception):
    """A bad argument or configuration; the message names it (exit 2)."""


# --- arguments -------------------------------------------------------------------------------


def _time_arg(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_iso_millis(text)
    except ValueError:
        raise UsageError(
            f"{name}: not an ISO-8601 time: {text!r} (e.g. 2026-11-26T10:00:00Z)"
        ) from None


def filters_of(args: argparse.Namespace) -> Filters:
    since = _time_arg("--since", args.since)
    until = _time_arg("--until", args.until)
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until: {args.until} is not after --since {args.since}")
    return Filters(
        since_ms=since,
        until_ms=until,
        subscription=args.subscription,
        reason=args.reason,
        stage=args.stage,
        request_id=getattr(args, "request_id", None),
    )


def _check_history_args(args: argparse.Namespace) -> None:
    for flag, value in (
        ("--since", args.since),
        ("--until", args.until),
        ("--subscription", args.subscription),
        ("--request-id", args.request_id),
        ("--reason", args.reason),
        ("--stage", args.stage),
        ("--rate", args.rate),
    ):
        if value is not None:
            raise UsageError(f"--history: lists every run; {flag} does not apply to it")
    if args.dry_run or args.force:
        raise UsageError("--history: --dry-run and --force do not apply to it")


# --- Kafka -----------------------------------------------------------------------------------


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count, or `KafkaUnreachable` within PROBE_SECONDS."""
    kafka = settings.kafka
    try:
        return probe_topics(kafka, PROBE_SECONDS)
    except KafkaRefused as exc:
        raise KafkaUnreachable(str(exc)) from None
    except BrokerError as exc:
        raise KafkaUnreachable(
            f"Kafka unreachable at {kafka.bootstrap_servers} (kafka.bootstrap_servers): "
            f"no answer within {PROBE_SECONDS:.0f}s ({exc})"
        ) from exc


def ensure_replay_log(settings: Settings, existing: dict[str, int]) -> int:
    """Create `topics.replay_log` (compacted, one partition) when missing; its partitions."""
    name = settings.topics.replay_log
    if name in existing:
        return existing[name]
    try:
        create_compacted_topic(settings.kafka, name, partitions=1)
    except BrokerError as exc:
        raise UsageError(f"topics.replay_log: cannot create topic {name}: {exc}") from exc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = topic_partitions(settings).get(name, 0)
        if parts > 0:
            return parts
        time.sleep(0.1)
    raise UsageError(f"topics.replay_log: topic {name} not visible after creation")


def read_dead_letters(
    settings: Settings, partitions: int, codec: Codec, *, timeout: float = READ_TIMEOUT_SECONDS
) -> list[DeadLetter]:
    """Every committed record of the DLQ, in partition and offset order."""
    topic = settings.topics.dlq
    try:
        stored = read_from_start(
            settings.kafka,
            topic,
            range(partitions),
            timeout=timeout,
            watermark_timeout=PROBE_SECONDS * 2,
        )
    except ReadIncomplete as exc:
        raise KafkaUnreachable(
            f"topic {topic} (topics.dlq): {exc} from {settings.kafka.bootstrap_servers}"
        ) from exc
    except PartitionFailed as exc:
        raise KafkaUnreachable(f"topic {topic} (topics.dlq): {exc}") from exc
    except BrokerError as exc:
        raise KafkaUnreachable(
            f"topic {topic} (topics.dlq) at {settings.kafka.bootstrap_servers}: {exc}"
        ) from exc
    out = [_dead_letter(r, codec) for r in stored]
    out.sort(key=lambda d: (d.partition, d.offset))
    return out


def _dead_letter(record: StoredRecord, codec: Codec) -> DeadLetter:
    headers = parse_dead_letter_headers(record.headers)
    value = record.value
    request_id = request_type = event_id = None
    # Only ids and the type are taken from the value; a profile it holds is never kept.
    if value is not None and headers.get("dlq.stage") not in ("decode", "validate"):
        with suppress(Exception):  # a request, or an event the planner or dispatcher refused
            decoded = codec.decode_inbound(value)
            if isinstance(decoded, LifecycleEvent):
                event_id = decoded.event_id
            else:
                request_id, request_type = decoded.request_id, decoded.type.value
    elif value is not None and headers.get("dlq.stage") == "validate":
        with suppress(Exception):
            event_id = str(codec.decode(value)[1].get("event_id") or "") or None
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=value,
        headers=headers,
        request_id=request_id,
        request_type=request_type,
        event_id=event_id,
    )


@dataclass(slots=True)
class Ledger:
    """What the replay log says: replayed dead letters of this DLQ, and the runs."""

    replayed: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]


def read_ledger(settings: Settings, partitions: int) -> Ledger:
    prefix = f"{LEDGER_PREFIX}{settings.topics.dlq}:".encode()
    replayed: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}

    def apply(_p: int, key: bytes, value: bytes | None) -> None:
        if key.startswith(prefix):
            ref = key[len(prefix) :].decode()
            if value is None:
                replayed.pop(ref, None)
            else:
                replayed[ref] = json.loads(value)
        elif key.startswith(RUN_PREFIX.encode()):
            run_id = key[len(RUN_PREFIX) :].decode()
            if value is None:
                runs.pop(run_id, None)
            else:
                runs[run_id] = json.loads(value)

    try:
        read_to_end(
            settings.kafka,
            settings.topics.replay_log,
            range(partitions),
            apply,
            timeout=READ_TIMEOUT_SECONDS,
        )
    except RestoreError as exc:
        raise KafkaUnreachable(
            f"topic {settings.topics.replay_log} (topics.replay_log) at "
            f"{settings.kafka.bootstrap_servers}: {exc}"
        ) from exc
    return Ledger(replayed, runs)


def choose(
    settings: Settings,
    args: argparse.Namespace,
    topics: dict[str, int],
    ledger: Ledger,
    codec: Codec,
) -> Selection:
    """The DLQ read to its end and the dead letters the arguments choose from it."""
    dead = read_dead_letters(settings, topics[settings.topics.dlq], codec)
    return select(
        dead,
        replayed_refs(dead, ledger.replayed),
        filters_of(args),
        max_replays=settings.dlq.max_replays,
        force=args.force,
        limit=args.limit,
        topics=topics,
    )


# --- output ----------------------------------------------------------------------------------


def _emit(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, separators=(",", ":"), sort_keys=False) + "\n")
    out.flush()


def render_dead_letter(v: dict[str, Any]) -> str:
    ident = (
        f"request={v['request_id']} type={v['request_type']}"
        if v["request_id"]
        else f"event={v['event_id'] or '-'}"
    )
    head = (
        f"{v['dlq']} subscription={v['subscription_id'] or '-'} {ident} stage={v['stage']} "
        f"reason={v['reason']} attempts={v['attempts'] if v['attempts'] is not None else '-'} "
        f"http={v['http_status'] if v['http_status'] is not None else '-'} "
        f"replays={v['replay_count']} parks_key={'yes' if v['parks_key'] else 'no'}"
    )
    lines = [head]
    if v["parked_behind"]:
        lines.append(f"    parked behind request {v['parked_behind']}")
    error = ": ".join(x for x in (v["error_class"], v["error_message"]) if x)
    lines.append(
        f"    failed {v['first_failure_at'] or '-'} .. {v['last_failure_at'] or '-'}"
        + (f"  {error}" if error else "")
    )
    if v["refused"]:
        lines.append(f"    would be refused: {v['refused']}")
    return "\n".join(lines)


def _selection_views(sel: Selection) -> list[dict[str, Any]]:
    views = [d.view() for d in sel.replay] + [d.view(reason) for d, reason in sel.refused]
    return sorted(views, key=lambda v: tuple(int(x) for x in str(v["dlq"]).split("@")))


def _skipped(sel: Selection) -> dict[str, int]:
    return {
        "already_replayed": sel.already_replayed,
        "not_matched": sel.not_matched,
        "over_limit": sel.over_limit,
    }


def print_dry_run(sel: Selection, out: TextIO, as_json: bool) -> None:
    views = _selection_views(sel)
    t = totals(views)
    summary: dict[str, Any] = {
        "totals": t,
        "would_replay": len(sel.replay),
        "would_refuse": sel.refused_counts(),
        "skipped": _skipped(sel),
    }
    if as_json:
        for v in views:
            _emit(out, v)
        _emit(out, summary)
        return
    for v in views:
        out.write(render_dead_letter(v) + "\n")
    out.write(f"totals: {t['dead_letters']} dead letters\n")
    out.write("  by stage: " + _counts(t["by_stage"]) + "\n")
    out.write("  by reason: " + _counts(t["by_reason"]) + "\n")
    out.write(
        f"a replay would put back {len(sel.replay)}, refuse "
        f"{_counts(sel.refused_counts()) or 'none'}; skipped: {_counts(_skipped(sel))}\n"
    )
    out.flush()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def print_history(ledger: Ledger, out: TextIO, as_json: bool, limit: int | None) -> None:
    runs = sorted(ledger.runs.values(), key=lambda r: str(r.get("started_at", "")))
    if limit is not None:
        runs = runs[-limit:]
    if as_json:
        for r in runs:
            _emit(out, r)
        return
    if not runs:
        out.write("no replay runs recorded\n")
    for r in runs:
        c = r.get("counts", {})
        filters = {k: v for k, v in (r.get("filters") or {}).items() if v not in (None, False)}
        out.write(
            f"{r.get('started_at')} run {r.get('run_id')} {r.get('status')} by {r.get('who')}: "
            f"replayed {c.get('replayed', 0)}, refused {_counts(c.get('refused') or {}) or '0'}, "
            f"skipped {_counts(c.get('skipped') or {})}; "
            f"filters {json.dumps(filters, sort_keys=True) if filters else 'none'}"
            f"; finished {r.get('finished_at') or '-'}\n"
        )
    out.flush()


# --- a real run ------------------------------------------------------------------------------


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, out: TextIO, quiet: bool) -> None:
        self.total = total
        self.out = out
        self.quiet = quiet
        self._bar: Any = None
        self._task: Any = None
        if not quiet and out.isatty() and total > 0:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("replaying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("replay", total=total)

    def committed(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif not self.quiet:
            self.out.write(f"replayed {done}/{self.total}\n")
            self.out.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class _Stop:
    """SIGINT/SIGTERM: finish the transaction in hand, then stop."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


@contextmanager
def _signals(stop: _Stop) -> Iterator[None]:
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _now_iso() -> str:
    return iso_millis(int(time.time() * 1000))


def filters_record(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "since": args.since,
        "until": args.until,
        "subscription": args.subscription,
        "request_id": args.request_id,
        "reason": args.reason,
        "stage": args.stage,
        "limit": args.limit,
        "rate": args.rate,
        "force": bool(args.force),
    }


class Replayer:
    """One real replay run against `settings`."""

    def __init__(self, settings: Settings, args: argparse.Namespace, out: TextIO) -> None:
        self.settings = settings
        self.args = args
        self.out = out
        self.run_id = uuid.uuid4().hex[:16]
        self.publisher: TransactionalPublisher | None = None
        self.record: dict[str, Any] = {}

    def _ledger_key(self, d: DeadLetter) -> bytes:
        return f"{LEDGER_PREFIX}{self.settings.topics.dlq}:{d.ref}".encode()

    @property
    def _tx(self) -> TransactionalPublisher:
        assert self.publisher is not None, "the run's transactional id is not open"
        return self.publisher

    def _run_record(self, record: dict[str, Any]) -> OutgoingRecord:
        return OutgoingRecord(
            self.settings.topics.replay_log,
            key=f"{RUN_PREFIX}{record['run_id']}".encode(),
            value=json.dumps(record, separators=(",", ":")).encode(),
        )

    def _put_run(self, record: dict[str, Any]) -> None:
        self._tx.publish([self._run_record(record)])

    def _commit(self) -> None:
        self._tx.commit(COMMIT_TIMEOUT_SECONDS)

    def run(self, topics: dict[str, int], codec: Codec, stop: _Stop) -> int:
        s = self.settings
        log_parts = ensure_replay_log(s, topics)
        tid = f"{s.kafka.transactional_id_prefix}-replay"
        try:
            # Fences an earlier run still holding the id; its open transaction is aborted.
            self.publisher = TransactionalPublisher(s.kafka, tid, init_timeout=30.0)
        except BrokerError as exc:
            raise KafkaUnreachable(
                f"transactional id {tid} (kafka.transactional_id_prefix) at "
                f"{s.kafka.bootstrap_servers}: {exc}"
            ) from exc
        ledger = read_ledger(s, log_parts)
        sel = choose(s, self.args, topics, ledger, codec)
        self.record = {
            "run_id": self.run_id,
            "who": _who(),
            "dlq": s.topics.dlq,
            "started_at": _now_iso(),
            "finished_at": None,
            "status": "running",
            "filters": filters_record(self.args),
            "counts": {
                "matched": len(sel.replay) + len(sel.refused) + sel.over_limit,
                "replayed": 0,
                "refused": sel.refused_counts(),
                "skipped": _skipped(sel),
            },
        }
        try:
            self._tx.begin()
            self._close_interrupted_runs(ledger)
            self._put_run(self.record)
            self._commit()
            done = self._republish(sel, topics, stop)
        except BrokerError as exc:
            self._abort()
            raise KafkaUnreachable(
                f"replay stopped at {s.kafka.bootstrap_servers}: {exc}; what was "
                "committed stays replayed, run replay again for the rest"
            ) from exc
        interrupted = done < len(sel.replay)
        self.record.update(
            finished_at=_now_iso(), status="interrupted" if interrupted else "completed"
        )
        self.record["counts"]["replayed"] = done
        try:
            self._tx.begin()
            self._put_run(self.record)
            self._commit()
        except BrokerError as exc:
            self._abort()
            raise KafkaUnreachable(
                f"audit record of run {self.run_id} not written at "
                f"{s.kafka.bootstrap_servers}: {exc}"
            ) from exc
        finally:
            self._tx.flush(5)
        self._summary(sel, done)
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_REFUSED if sel.refused else EXIT_OK

    def _abort(self) -> None:
        self._tx.abort(10)

    def _close_interrupted_runs(self, ledger: Ledger) -> None:
        """Runs still 'running' were killed (this run fenced them): recorded as interrupted,
        with the number of dead letters their committed transactions replayed."""
        for run in ledger.runs.values():
            if run.get("status") != "running":
                continue
            n = sum(1 for e in ledger.replayed.values() if e.get("run_id") == run.get("run_id"))
            closed = dict(run, status="interrupted")
            closed["counts"] = dict(run.get("counts") or {}, replayed=n)
            self._put_run(closed)

    def _republish(self, sel: Selection, topics: dict[str, int], stop: _Stop) -> int:
        rate = self.args.rate
        progress = Progress(len(sel.replay), self.out, quiet=self.args.json)
        done = 0
        started = time.monotonic()
        try:
            i = 0
            while i < len(sel.replay) and not stop.requested:
                self._tx.begin()
                tx_started = time.monotonic()
                n = 0
                while (
                    i < len(sel.replay)
                    and n < BATCH_RECORDS
                    and time.monotonic() - tx_started < BATCH_SECONDS
                    and not stop.requested
                ):
                    if rate is not None:
                        due = started + i / rate
                        wait = due - time.monotonic()
                        if wait > 0:
                            time.sleep(min(wait, BATCH_SECONDS))
                            continue
                    self._produce(sel.replay[i], topics)
                    i += 1
                    n += 1
                self._commit()
                done = i
                progress.committed(done)
        finally:
            progress.close()
        return done

    def _produce(self, d: DeadLetter, topics: dict[str, int]) -> None:
        """The dead letter back where it came from, and its ledger entry, in the open
        transaction."""
        assert d.original_topic is not None
        p = d.original_partition
        # Where it was: a parked key's marker names this partition.
        partition = p if p is not None and 0 <= p < topics.get(d.original_topic, 0) else None
        entry = {
            "run_id": self.run_id,
            "at": _now_iso(),
            "to": f"{d.original_topic}/{partition if partition is not None else '-'}",
            "fp": d.fingerprint,
        }
        self._tx.publish(
            [
                OutgoingRecord(
                    d.original_topic,
                    key=d.key,
                    value=d.value,
                    headers=d.replay_headers(self.run_id),
                    partition=partition,
                ),
                OutgoingRecord(
                    self.settings.topics.replay_log,
                    key=self._ledger_key(d),
                    value=json.dumps(entry, separators=(",", ":")).encode(),
                ),
            ]
        )

    def _summary(self, sel: Selection, done: int) -> None:
        if self.args.json:
            for d, reason in sel.refused:
                _emit(self.out, d.view(reason))
            _emit(self.out, dict(self.record))
            return
        out = self.out
        status = self.record["status"]
        out.write(
            f"replay run {self.run_id} {status}: replayed {done} of {len(sel.replay)}; "
            f"refused {_counts(sel.refused_counts()) or 'none'}; skipped {_counts(_skipped(sel))}\n"
        )
        for d, reason in sel.refused:
            v = d.view(reason)
            ident = (
                f"request={v['request_id']}" if v["request_id"] else f"event={v['event_id'] or '-'}"
            )
            out.write(
                f"  refused {v['dlq']} subscription={v['subscription_id'] or '-'} "
                f"{ident} stage={v['stage']} reason={v['reason']} "
                f"replays={v['replay_count']}: {reason}{_hint(reason)}\n"
            )
        out.flush()


def _hint(refusal: str) -> str:
    return {
        "MAX_REPLAYS": " (dlq.max_replays reached; --force to replay anyway)",
        "STAGE_NEEDS_FORCE": " (CRM's bytes would fail the same way; --force to replay anyway)",
        "PARKED_BEHIND": " (its key waits for a dead letter this run does not replay)",
        "NO_ORIGIN": " (no original topic to put it back on)",
    }.get(refusal, "")


# --- entry -----------------------------------------------------------------------------------


def run_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    quiet_librdkafka()
    if args.history:
        _check_history_args(args)
    filters_of(args)  # bad times are told before anything is read
    settings = load_settings(args.config)
    topics = topic_partitions(settings)
    if args.history:
        parts = topics.get(settings.topics.replay_log)
        ledger = read_ledger(settings, parts) if parts else Ledger({}, {})
        print_history(ledger, out, args.json, args.limit)
        return EXIT_OK
    if settings.topics.dlq not in topics:
        raise UsageError(
            f"topics.dlq: topic {settings.topics.dlq} does not exist at "
            f"{settings.kafka.bootstrap_servers}"
        )
    codec = Codec.from_settings(settings)
    if args.dry_run:
        parts = topics.get(settings.topics.replay_log)
        ledger = read_ledger(settings, parts) if parts else Ledger({}, {})
        sel = choose(settings, args, topics, ledger, codec)
        print_dry_run(sel, out, args.json)
        return EXIT_REFUSED if sel.refused else EXIT_OK
    stop = _Stop()
    with _signals(stop):
        return Replayer(settings, args, out).run(topics, codec, stop)


def main(args: argparse.Namespace) -> int:
    return _guarded(lambda: run_command(args, sys.stdout, sys.stderr), sys.stderr)


def _guarded(body: Callable[[], int], err: TextIO) -> int:
    try:
        return body()
    except UsageError as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    except KafkaUnreachable as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_KAFKA


__all__ = ["main", "run_command"]
