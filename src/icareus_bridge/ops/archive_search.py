"""`icareus-bridge archive search DIR`: find archived results by subscription, request id, time
and state. Every file's sha256 is checked against the manifest before anything is read.

What is printed is ids, types, states, codes and times only: the subscriber profile of an
ADD_USER request and the request and response payloads stay in the files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from icareus_bridge.ops.archive_store import (
    MANIFEST,
    ArchiveDamaged,
    day_of_millis,
    iso_of_millis,
    load_manifest,
    read_file,
    verify,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DAMAGED = 5
PROG = "icareus-bridge archive search"

COLUMNS = (
    ("time", "result_time"),
    ("subscription", "subscription_id"),
    ("request id", "request_id"),
    ("type", "type"),
    ("distributor", "distributor"),
    ("state", "state"),
    ("error", "error_code"),
    ("attempts", "attempts"),
    ("user id", "reference_number"),
)


class _Usage(Exception):
    pass


def _time(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(f"{flag}: not an ISO-8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def summary(record: dict[str, Any], file_name: str) -> dict[str, Any]:
    """What search shows of one archived record: no names, e-mail, phone or payloads."""
    result = record["result"]
    request = record["request"]
    return {
        "result_time": iso_of_millis(record["result_timestamp"]),
        "subscription_id": result["subscription_id"],
        "subscription_number": result["subscription_number"],
        "request_id": result["request_id"],
        "number": result["number"],
        "type": result["type"],
        "distributor": result["distributor"],
        "account_key": result["account_key"],
        "event_id": result["event_id"],
        "action_code": result["action_code"],
        "state": result["life_cycle_state"],
        "error_code": result["error_code"],
        "attempts": result["attempts"],
        "reference_number": result["reference_number"],
        "created_at": iso_of_millis(result["created_at"]),
        "executed_at": (
            iso_of_millis(result["executed_at"]) if result["executed_at"] is not None else None
        ),
        "product_ids": list(result["product_ids"]),
        "device_id": result["device_id"],
        "device_type": result["device_type"],
        "request_found": request is not None,
        "result_partition": record["result_partition"],
        "result_offset": record["result_offset"],
        "file": file_name,
    }


def matches(
    directory: Path,
    *,
    subscription: str | None = None,
    request_id: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    state: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Archived records that pass every filter (AND), as `summary` dicts, in file order.
    `since` is inclusive, `until` exclusive, both on the result's Kafka timestamp.
    Raises ArchiveDamaged before reading anything when a file is missing or damaged."""
    if not directory.is_dir():
        raise _Usage(f"DIR {directory}: no such directory")
    manifest = load_manifest(directory)
    if manifest is None:
        raise _Usage(f"DIR {directory}: not an archive (no {MANIFEST})")
    problems = verify(directory, manifest)
    if problems:
        raise ArchiveDamaged("; ".join(problems))
    first_day = day_of_millis(since_ms) if since_ms is not None else None
    last_day = day_of_millis(until_ms) if until_ms is not None else None
    for entry in manifest.files:
        if (first_day and entry.day < first_day) or (last_day and entry.day > last_day):
            continue
        for record in read_file(directory, entry):
            result = record["result"]
            ts = record["result_timestamp"]
            if subscription is not None and result["subscription_id"] != subscription:
                continue
            if request_id is not None and result["request_id"] != request_id:
                continue
            if state is not None and result["life_cycle_state"] != state:
                continue
            if since_ms is not None and ts < since_ms:
                continue
            if until_ms is not None and ts >= until_ms:
                continue
            yield summary(record, entry.name)


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} archived results")
    for title, _ in COLUMNS:
        table.add_column(title, no_wrap=title in ("time", "request id"))
    for row in rows:
        table.add_row(*("" if row[key] is None else str(row[key]) for _, key in COLUMNS))
    # Wide enough off a terminal (pipes, logs) that ids are not cut.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def search(args: argparse.Namespace) -> int:
    try:
        found = matches(
            args.dir,
            subscription=args.subscription,
            request_id=args.request_id,
            since_ms=_time("--since", args.since),
            until_ms=_time("--until", args.until),
            state=args.state,
        )
        if args.json:
            n = 0
            for row in found:
                sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
                n += 1
            print(f"{n} archived results matched", file=sys.stderr)
        else:
            _table(list(found))
    except _Usage as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveDamaged as exc:
        print(f"{PROG}: archive damaged: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    return EXIT_OK
