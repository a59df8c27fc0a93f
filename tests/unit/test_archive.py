"""The archive without a broker: its CLI surface and exit codes, its record schema against the
result and request schemas, its files (atomic, part-numbered, sha256-checked) and search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from icareus_bridge.codec import default_schemas_dir
from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RequestType,
    SubscriberProfile,
)
from icareus_bridge.ops.archive_search import matches
from icareus_bridge.ops.archive_store import (
    Manifest,
    archive_schema,
    atomic_write,
    next_part_name,
    read_file,
    remove_leftovers,
    save_manifest,
    verify,
    write_day_file,
)

SCRIPT = Path(sys.executable).parent / "icareus-bridge"
DAY = "2026-11-20"
T0 = 1_795_132_800_000  # 2026-11-20T00:00:00Z


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "icareus_bridge.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    environ.update(env or {})
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, env=environ,
        stdin=subprocess.DEVNULL,
    )


def _record(sub: str, n: int, *, planner_rejection: bool = False) -> dict[str, Any]:
    request = ProvisioningRequest(
        request_id=f"req-{sub}-{n}",
        number=f"R-{n}",
        type=RequestType.ADD_USER,
        subscription_id=sub,
        subscription_number=f"N-{sub}",
        distributor="ICAREUS-VP1",
        account_key=f"{sub}:ICAREUS-VP1",
        event_id=f"ev-{n}",
        action_code="BECOME_SUBSCRIBER",
        sequence=n,
        created_at=T0 + n,
        profile=SubscriberProfile(first_name="Maria", last_name="Ioannou", email="m@example.org",
                                  phone="+357-1234"),
    )
    result = ProvisioningResult(
        **request.model_dump(
            include={"request_id", "number", "type", "subscription_id", "subscription_number",
                     "distributor", "account_key", "event_id", "action_code", "sequence",
                     "created_at"}
        ),
        life_cycle_state=LifeCycleState.REJECTED if planner_rejection else LifeCycleState.COMPLETED,
        error_code="VIEWING_POINT_LIMIT" if planner_rejection else None,
        attempts=0 if planner_rejection else 1,
        executed_at=T0 + n + 10,
        request_payload='{"firstName": "Maria"}',
    )
    return {
        "result_topic": "results",
        "result_partition": n % 2,
        "result_offset": n,
        "result_timestamp": T0 + n + 20,
        "result": result.model_dump(mode="json"),
        "request_topic": None if planner_rejection else "requests",
        "request_partition": None if planner_rejection else n % 2,
        "request_offset": None if planner_rejection else 100 + n,
        "request": None if planner_rejection else request.model_dump(mode="json"),
        "archived_at": T0 + 10_000,
    }


def _archive(tmp_path: Path, codec: Any = "deflate") -> tuple[Path, Manifest]:
    out = tmp_path / "archive"
    out.mkdir()
    manifest = Manifest(results_topic="results", requests_topic="requests")
    records = [
        _record("sub-1", 1),
        _record("sub-2", 2),
        _record("sub-1", 3, planner_rejection=True),
    ]
    manifest.files.append(write_day_file(out, manifest, DAY, records, codec))
    save_manifest(out, manifest)
    return out, manifest


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["archive", "--older-than", "-1", "--out", "/tmp/x"], "--older-than"),
        (["archive", "--older-than", "seven", "--out", "/tmp/x"], "--older-than"),
        (["archive", "--out", "/tmp/x"], "--older-than"),
        (["archive", "--older-than", "0"], "--out"),
        (["archive", "--older-than", "0", "--out", "/tmp/x", "--codec", "lz4"], "--codec"),
        (["archive", "search", "--state", "PENDING", "/tmp"], "--state"),
        (["archive", "search"], "DIR"),
        (["archive", "search", "/no/such/archive"], "/no/such/archive"),
        (["archive", "--older-than", "0", "search", "/tmp"], "--older-than"),
    ],
)
def test_bad_flags_exit_2_naming_the_argument(args: list[str], named: str) -> None:
    done = _cli(*args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr


def test_a_bad_time_filter_exits_2_naming_it(tmp_path: Path) -> None:
    out, _ = _archive(tmp_path)

    done = _cli("archive", "search", "--since", "last tuesday", str(out))

    assert done.returncode == 2
    assert "--since" in done.stderr and "last tuesday" in done.stderr


def test_a_bad_archive_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    done = _cli(
        "archive", "--older-than", "0", "--out", str(tmp_path),
        env={"ICAREUS_BRIDGE__ARCHIVE__CODEC": "lz4"},
    )

    assert done.returncode == 2
    assert "archive.codec" in done.stderr


def test_a_directory_without_a_manifest_is_not_an_archive(tmp_path: Path) -> None:
    done = _cli("archive", "search", str(tmp_path))

    assert done.returncode == 2
    assert "manifest.json" in done.stderr


# --- the record schema -------------------------------------------------------------------------


def _canonical_with_named_types(schema: Any, defined: dict[str, Any]) -> str:
    def expand(node: Any, seen: dict[str, Any]) -> Any:
        if isinstance(node, str) and node in seen:
            return seen[node]
        if isinstance(node, list):
            return [expand(n, seen) for n in node]
        if isinstance(node, dict):
            out = {k: expand(v, seen) for k, v in node.items()}
            if node.get("type") in ("enum", "record") and "name" in node:
                seen[f"{node.get('namespace', 'com.icareus.bridge.v1')}.{node['name']}"] = out
            return out
        return node

    return to_parsing_canonical_form(expand(schema, dict(defined)))


def test_the_archive_record_embeds_the_current_result_and_request_schemas() -> None:
    schemas = default_schemas_dir()
    result = json.loads((schemas / "provisioning_result.avsc").read_text())
    request = json.loads((schemas / "provisioning_request.avsc").read_text())
    fields = {f["name"]: f["type"] for f in archive_schema()["fields"]}
    request_type = next(f["type"] for f in result["fields"] if f["name"] == "type")
    defined = {"com.icareus.bridge.v1.RequestType": request_type}

    assert _canonical_with_named_types(fields["result"], {}) == to_parsing_canonical_form(result)
    assert fields["request"][0] == "null"
    assert _canonical_with_named_types(fields["request"][1], defined) == (
        to_parsing_canonical_form(request)
    )
    fastavro.parse_schema(archive_schema())


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["deflate", "zstandard"])
def test_a_day_file_reads_back_with_fastavro_and_the_manifest_describes_it(
    tmp_path: Path, codec: str
) -> None:
    out, manifest = _archive(tmp_path, codec)
    entry = manifest.files[0]

    with (out / entry.name).open("rb") as fo:
        reader = fastavro.reader(fo)
        assert reader.codec == codec
        schema = json.loads(reader.metadata["avro.schema"])
        assert schema["name"].endswith("ProvisioningArchiveRecord")
        assert len(list(reader)) == 3
    assert [r["result"]["request_id"] for r in read_file(out, entry)] == [
        "req-sub-1-1", "req-sub-2-2", "req-sub-1-3"
    ]
    assert entry.name == f"provisioning-{DAY}.part-0001.avro"
    assert entry.records == 3
    assert {p: (r.first, r.last, r.records) for p, r in entry.results.items()} == {
        0: (2, 2, 1), 1: (1, 3, 2)
    }
    requests = {p: (r.first, r.last) for p, r in entry.requests.items()}
    assert requests == {0: (102, 102), 1: (101, 101)}
    assert verify(out, manifest) == []
    assert Manifest.model_validate_json((out / "manifest.json").read_text()) == manifest


def test_a_second_file_of_a_day_is_the_next_part(tmp_path: Path) -> None:
    out, manifest = _archive(tmp_path)

    assert next_part_name(out, manifest, DAY) == f"provisioning-{DAY}.part-0002.avro"
    assert next_part_name(out, manifest, "2026-11-21") == "provisioning-2026-11-21.part-0001.avro"


def test_leftovers_of_an_interrupted_run_are_removed_and_listed_files_kept(tmp_path: Path) -> None:
    out, manifest = _archive(tmp_path)
    (out / f"provisioning-{DAY}.part-0002.avro").write_bytes(b"unlisted")
    (out / ".manifest.json.77.tmp").write_text("{")

    removed = remove_leftovers(out, manifest)

    assert removed == [".manifest.json.77.tmp", f"provisioning-{DAY}.part-0002.avro"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", manifest.files[0].name]


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def fail(fo: Any) -> None:
        fo.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)

    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


# --- search ------------------------------------------------------------------------------------


def test_search_filters_combine_with_and(tmp_path: Path) -> None:
    out, _ = _archive(tmp_path)

    assert [r["request_id"] for r in matches(out, subscription="sub-1")] == [
        "req-sub-1-1", "req-sub-1-3"
    ]
    assert [r["request_id"] for r in matches(out, subscription="sub-1", state="REJECTED")] == [
        "req-sub-1-3"
    ]
    assert [r["request_id"] for r in matches(out, request_id="req-sub-2-2")] == ["req-sub-2-2"]
    assert [r["request_id"] for r in matches(out, since_ms=T0 + 22, until_ms=T0 + 23)] == [
        "req-sub-2-2"
    ]
    assert list(matches(out, subscription="sub-1", request_id="req-sub-2-2")) == []
    rejection = next(iter(matches(out, state="REJECTED")))
    assert rejection["request_found"] is False and rejection["attempts"] == 0


def test_search_shows_no_personal_data_or_payloads(tmp_path: Path) -> None:
    out, _ = _archive(tmp_path)

    table = _cli("archive", "search", str(out))
    lines = _cli("archive", "search", "--json", str(out))
    for printed in (table, lines):
        assert printed.returncode == 0, printed.stderr
        assert "req-sub-1-1" in printed.stdout
        for personal in ("Maria", "Ioannou", "m@example.org", "+357-1234", "firstName"):
            assert personal not in printed.stdout + printed.stderr


def test_a_damaged_file_is_named_and_exits_5(tmp_path: Path) -> None:
    out, manifest = _archive(tmp_path)
    path = out / manifest.files[0].name
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))

    done = _cli("archive", "search", "--subscription", "sub-1", str(out))

    assert done.returncode == 5
    assert manifest.files[0].name in done.stderr and "damaged" in done.stderr
    assert done.stdout == ""


def test_a_missing_file_is_named_and_exits_5(tmp_path: Path) -> None:
    out, manifest = _archive(tmp_path)
    (out / manifest.files[0].name).unlink()

    done = _cli("archive", "search", "--json", str(out))

    assert done.returncode == 5
    assert f"{manifest.files[0].name}: missing" in done.stderr


def test_an_unreadable_manifest_exits_5_naming_it(tmp_path: Path) -> None:
    out, _ = _archive(tmp_path)
    (out / "manifest.json").write_text('{"format": 1, "files": 3}')

    done = _cli("archive", "search", str(out))

    assert done.returncode == 5
    assert "manifest.json" in done.stderr
