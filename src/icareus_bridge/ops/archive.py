"""`icareus-bridge archive`: CRM.COM's archiving of former provisioning requests. Results older
than a cut-off, each joined with the request that was sent for it, go from the live topics into
Avro files of an archive directory (`archive_store`); `--delete` then removes archived records
from the live log with Kafka DeleteRecords; `archive search` reads an archive back.

Exit codes: 0 done; 1 some results could not be archived (a result that does not decode stops
its partition, named); 2 usage or configuration error, naming the argument or key; 4 Kafka
unreachable, naming the bootstrap address; 5 the archive is damaged (a file missing, or its
sha256 not the manifest's; the file is named)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icareus_bridge.config import Settings, load_settings
from icareus_bridge.kafka.clients import quiet_librdkafka
from icareus_bridge.ops.archive_store import (
    ArchiveDamaged,
    ArchiveFile,
    ArchiveMismatch,
    ArchiveRun,
    Codec,
    Deletion,
    Manifest,
    day_of_millis,
    exclusive,
    iso_of_millis,
    load_manifest,
    now_iso,
    read_file,
    remove_leftovers,
    save_manifest,
    write_day_file,
)

if TYPE_CHECKING:
    from icareus_bridge.ops.archive_kafka import Cluster, Fetched, RequestsRead

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_KAFKA = 4
EXIT_DAMAGED = 5

DAY_MS = 86_400_000
PROG = "icareus-bridge archive"


class UsageError(Exception):
    """A bad argument; the message names it."""


@dataclass
class DeletionPlan:
    """Where one partition's deletion stops and what stopped it there."""

    topic: str
    partition: int
    low: int
    before_offset: int
    bound_by: str


@dataclass
class ExportReport:
    cutoff_ms: int
    files: list[ArchiveFile] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)
    planner_rejections: int = 0  # results with attempts 0: nothing was sent, no request
    requests_missing: int = 0  # results with attempts > 0 whose request is no longer in the log
    gaps: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    deletions: list[DeletionPlan] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)


def _archive_record(
    settings: Settings, fetched: Fetched, request: Fetched | None, archived_at: int
) -> dict[str, Any]:
    return {
        "result_topic": settings.topics.results,
        "result_partition": fetched.partition,
        "result_offset": fetched.offset,
        "result_timestamp": fetched.timestamp,
        "result": fetched.value,
        "request_topic": settings.topics.requests if request is not None else None,
        "request_partition": request.partition if request is not None else None,
        "request_offset": request.offset if request is not None else None,
        "request": request.value if request is not None else None,
        "archived_at": archived_at,
    }


def _prepare_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it: {exc.strerror or exc}") from exc


def export(
    settings: Settings,
    out: Path,
    older_than_days: int,
    codec: Codec,
    *,
    delete: bool = False,
    now_ms: int | None = None,
) -> ExportReport:
    """Archive every result at or before now - `older_than_days` not archived yet.

    1. Load the manifest (or start one) and remove what an interrupted run left.
    2. Read each results partition from the manifest's next offset up to the cut-off (its
       first younger record), read_committed.
    3. Read the requests topic for the requests of those results.
    4. Write one new part file per UTC day (temporary name, fsync, rename).
    5. Save the manifest (atomically) with the files and the new next offsets.
    6. With `delete`: DeleteRecords on both topics up to what is archived, never past the
       committed offsets of the planner group and archive.crm_group_id (results) or of the
       dispatcher group (requests)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    report = ExportReport(cutoff_ms=now - older_than_days * DAY_MS)

    _prepare_dir(out)
    with exclusive(out):
        return _export(settings, out, older_than_days, codec, delete, now, report)


def _export(
    settings: Settings,
    out: Path,
    older_than_days: int,
    codec: Codec,
    delete: bool,
    now: int,
    report: ExportReport,
) -> ExportReport:
    from icareus_bridge.codec import Codec as AvroCodec
    from icareus_bridge.ops.archive_kafka import Cluster, RequestsRead

    topics = settings.topics
    manifest = _open_manifest(settings, out)
    report.removed_leftovers = remove_leftovers(out, manifest)

    cluster = Cluster(settings)
    result_parts = cluster.require("topics.results", topics.results)
    request_parts = cluster.require("topics.requests", topics.requests)
    start = _start_offsets(settings, cluster, out, manifest, result_parts, report)

    avro = AvroCodec.from_settings(settings)
    results = cluster.read_results(avro, topics.results, start, report.cutoff_ms)
    for p, (offset, why) in sorted(results.undecodable.items()):
        report.undecodable.append(
            f"{topics.results} partition {p} offset {offset}: {why} (partition stopped there)"
        )
    wanted = {r.value["request_id"] for r in results.records}
    if wanted or delete:
        requests = cluster.read_requests(avro, topics.requests, request_parts, wanted, delete)
    else:
        requests = RequestsRead()  # nothing new to join: the requests topic is not read

    by_day = _records_by_day(settings, results.records, requests, now, report)
    _write_days(out, manifest, by_day, codec, report)
    if report.files:
        _advance_manifest(out, manifest, results.records, older_than_days, report)

    if delete:
        report.deletions = _delete(settings, cluster, out, manifest, results.records, requests)
    return report


def _open_manifest(settings: Settings, out: Path) -> Manifest:
    """The archive's manifest, or a new one; `ArchiveMismatch` when it archives other topics."""
    topics = settings.topics
    manifest = load_manifest(out)
    if manifest is None:
        return Manifest(results_topic=topics.results, requests_topic=topics.requests)
    if (manifest.results_topic, manifest.requests_topic) != (topics.results, topics.requests):
        raise ArchiveMismatch(
            f"--out {out}: holds the archive of {manifest.results_topic} and "
            f"{manifest.requests_topic}, not of topics.results={topics.results} and "
            f"topics.requests={topics.requests}; use another directory"
        )
    return manifest


def _start_offsets(
    settings: Settings,
    cluster: Cluster,
    out: Path,
    manifest: Manifest,
    result_parts: list[int],
    report: ExportReport,
) -> dict[int, int]:
    """Per results partition, where this run reads from: the manifest's next offset, or the
    start of the log when retention removed records before they were archived (a gap)."""
    results_topic = settings.topics.results
    marks = cluster.watermarks(results_topic, result_parts)
    start: dict[int, int] = {}
    for p in result_parts:
        low, high = marks[p]
        archived = manifest.next_offsets.get(p, 0)
        if archived > high:
            raise ArchiveMismatch(
                f"--out {out}: partition {p} of {results_topic} is archived up to offset "
                f"{archived} but the topic ends at {high}; was the topic recreated? "
                "use another directory"
            )
        if archived < low:
            # Offsets [archived, low) left the log (retention) before this archive read them.
            report.gaps.append(f"{results_topic} partition {p}: offsets {archived}..{low - 1}")
        start[p] = max(archived, low)
    return start


def _records_by_day(
    settings: Settings,
    results: list[Fetched],
    requests: RequestsRead,
    now: int,
    report: ExportReport,
) -> dict[str, list[dict[str, Any]]]:
    """The archive records (each result joined with its request), per UTC day of the result,
    in time order; results without a request are counted in `report`."""
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(results, key=lambda f: (f.timestamp, f.partition, f.offset)):
        request = requests.found.get(r.value["request_id"])
        if request is None:
            if r.value["attempts"] == 0:
                report.planner_rejections += 1
            else:
                report.requests_missing += 1
        by_day[day_of_millis(r.timestamp)].append(_archive_record(settings, r, request, now))
    return by_day


def _write_days(
    out: Path,
    manifest: Manifest,
    by_day: dict[str, list[dict[str, Any]]],
    codec: Codec,
    report: ExportReport,
) -> None:
    for day in sorted(by_day):
        entry = write_day_file(out, manifest, day, by_day[day], codec)
        manifest.files.append(entry)
        report.files.append(entry)


def _advance_manifest(
    out: Path,
    manifest: Manifest,
    archived: list[Fetched],
    older_than_days: int,
    report: ExportReport,
) -> None:
    """The new next offsets and this run saved in the manifest (atomically)."""
    for r in archived:
        manifest.next_offsets[r.partition] = max(
            manifest.next_offsets.get(r.partition, 0), r.offset + 1
        )
    manifest.next_offsets = dict(sorted(manifest.next_offsets.items()))
    manifest.runs.append(
        ArchiveRun(
            at=now_iso(),
            older_than_days=older_than_days,
            cutoff=iso_of_millis(report.cutoff_ms),
            records=report.records,
            files=[f.name for f in report.files],
        )
    )
    save_manifest(out, manifest)


def _bound(limits: list[tuple[str, int]]) -> tuple[int, str]:
    offset, why = min((o, w) for w, o in limits)
    return offset, why


def _delete(
    settings: Settings,
    cluster: Cluster,
    out: Path,
    manifest: Manifest,
    archived_now: list[Fetched],
    requests: RequestsRead,
) -> list[DeletionPlan]:
    topics = settings.topics
    plans: list[DeletionPlan] = []

    # Results: up to the archived offsets, never past a group that still reads them.
    result_parts = sorted(cluster.require("topics.results", topics.results))
    marks = cluster.watermarks(topics.results, result_parts)
    readers = [("planner.group_id", settings.planner.group_id)]
    if settings.archive.crm_group_id:
        readers.append(("archive.crm_group_id", settings.archive.crm_group_id))
    positions = {
        key: (group, cluster.committed(group, topics.results, result_parts))
        for key, group in readers
    }
    for p in result_parts:
        low = marks[p][0]
        limits = [("archived offsets", manifest.next_offsets.get(p, low))]
        for key, (group, committed) in positions.items():
            c = committed.get(p)
            limits.append((f"{key} {group} (committed {c if c is not None else 'none'})",
                           c if c is not None else low))
        offset, why = _bound(limits)
        plans.append(DeletionPlan(topics.results, p, low, offset, why))

    # Requests: a request leaves only when its result is archived and the dispatcher has read
    # past it; the first request in a partition without an archived result stops the deletion.
    request_parts = sorted(cluster.require("topics.requests", topics.requests))
    rmarks = cluster.watermarks(topics.requests, request_parts)
    dispatcher = settings.dispatcher.group_id
    dispatched = cluster.committed(dispatcher, topics.requests, request_parts)
    archived_ids = {r.value["request_id"] for r in archived_now}
    for entry in manifest.files:
        overlaps = any(
            rng.last >= rmarks.get(p, (0, 0))[0] for p, rng in entry.requests.items()
        )
        if overlaps:
            archived_ids.update(rec["result"]["request_id"] for rec in read_file(out, entry))
    for p in request_parts:
        low = rmarks[p][0]
        cursor = requests.end.get(p, low)
        why = "end of the requests read"
        for offset, request_id in requests.log.get(p, []):
            if request_id is None or request_id not in archived_ids:
                cursor = offset
                why = f"request at offset {offset} without an archived result"
                break
        c = dispatched.get(p)
        limits = [
            (why, cursor),
            (f"dispatcher.group_id {dispatcher} (committed {c if c is not None else 'none'})",
             c if c is not None else low),
        ]
        offset, bound_by = _bound(limits)
        plans.append(DeletionPlan(topics.requests, p, low, offset, bound_by))

    for topic in (topics.results, topics.requests):
        todo = {d.partition: d.before_offset for d in plans if d.topic == topic and
                d.before_offset > d.low}
        cluster.delete_before(topic, todo)
        at = now_iso()
        manifest.deletions.extend(
            Deletion(at=at, topic=topic, partition=p, before_offset=o) for p, o in todo.items()
        )
    if any(d.before_offset > d.low for d in plans):
        save_manifest(out, manifest)
    return plans


def _print_report(report: ExportReport, out: Path, days: int) -> None:
    print(
        f"archived {report.records} results at or before {iso_of_millis(report.cutoff_ms)} "
        f"(older than {days} days) into {out}"
    )
    for f in report.files:
        print(f"  {f.name}  {f.records} records  {f.codec}  sha256 {f.sha256}")
    if report.planner_rejections:
        print(f"  {report.planner_rejections} planner rejections (attempts 0, no request sent)")
    if report.requests_missing:
        print(f"  {report.requests_missing} results whose request is not on the requests topic "
              "(removed by retention, or sent by a reset)")
    for name in report.removed_leftovers:
        print(f"  removed {name} (left by an interrupted run)")
    for gap in report.gaps:
        print(f"  gap: {gap} left the log before they were archived", file=sys.stderr)
    for why in report.undecodable:
        print(f"{PROG}: not archived: {why}", file=sys.stderr)
    for d in report.deletions:
        if d.before_offset > d.low:
            print(f"deleted {d.topic} partition {d.partition} before offset {d.before_offset} "
                  f"(was from {d.low}; bound: {d.bound_by})")
        else:
            print(f"nothing deleted from {d.topic} partition {d.partition} "
                  f"(starts at {d.low}; bound: {d.bound_by})")


def main(args: argparse.Namespace) -> int:
    from icareus_bridge.ops.archive_kafka import KafkaUnreachable, TopicMissing

    try:
        if getattr(args, "archive_command", None) == "search":
            for flag, value in (
                ("--older-than", args.older_than),
                ("--out", args.out),
                ("--codec", args.codec),
                ("--delete", args.delete or None),
            ):
                if value is not None:
                    raise UsageError(f"{flag} belongs to `archive`, not to `archive search`")
            from icareus_bridge.ops.archive_search import search

            return search(args)
        if args.older_than is None:
            raise UsageError("--older-than DAYS is required (0 = everything up to now)")
        if args.out is None:
            raise UsageError("--out DIR is required")
        settings = load_settings(args.config)
        quiet_librdkafka()
        codec: Codec = args.codec or settings.archive.codec
        report = export(settings, args.out, args.older_than, codec, delete=args.delete)
    except (UsageError, ArchiveMismatch, TopicMissing) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveDamaged as exc:
        print(f"{PROG}: archive damaged: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    except KafkaUnreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_KAFKA
    _print_report(report, args.out, args.older_than)
    return EXIT_PARTIAL if report.undecodable else EXIT_OK
