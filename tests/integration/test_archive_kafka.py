"""`icareus-bridge archive` against the real broker: results and their requests written the
way the bridge writes them, archived as a subprocess, read back with fastavro and with Java's
avro-tools, archived again (nothing twice, only what is new), deleted from the live log no
further than the CRM group and the bridge's own groups have read, and searched."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.archive_support import (
    DAY_MS,
    EMAIL,
    FIRST_NAME,
    LAST_NAME,
    PHONE,
    REPO_ROOT,
    Topics,
    Writer,
    archive_topics,
    as_request,
    as_result,
    cli,
    commit,
    config_file,
    manifest,
    now_ms,
    read_back,
    unique,
    watermarks,
)

sys.path.insert(0, str(REPO_ROOT / "tools"))
import avro_tools


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    with archive_topics(kafka_bootstrap) as t:
        yield t


@pytest.fixture
def writer(kafka_bootstrap: str, topics: Topics) -> Iterator[Writer]:
    w = Writer(kafka_bootstrap, topics)
    try:
        yield w
    finally:
        w.close()


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _archive(config: Path, out: Path, days: int, *extra: str) -> str:
    done = cli("archive", "--config", str(config), "--older-than", str(days), "--out", str(out),
               *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_full_export_reads_back_record_for_record(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    now = now_ms()
    three_days_ago, yesterday = now - 3 * DAY_MS, now - DAY_MS
    writer.story("sub-a", three_days_ago)
    writer.story("sub-b", three_days_ago + 1000, abort=True)  # never committed: not archived
    writer.story("sub-c", yesterday)
    writer.story("sub-d", yesterday + 1000)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"

    printed = _archive(config, out, 0)

    assert "archived 9 results" in printed
    records = read_back(out)
    assert len(records) == len(writer.produced) == 9
    by_offset = {(r["result_partition"], r["result_offset"]): r for r in records}
    for p in writer.produced:
        rec = by_offset[(p.partition, p.offset)]
        assert as_result(rec["result"]) == p.result
        assert as_request(rec["request"]) == p.request  # None for the planner's rejection
        assert int(rec["result_timestamp"].timestamp() * 1000) == p.timestamp
        assert rec["result_topic"] == topics.results
        if p.request is not None:
            assert rec["request_topic"] == topics.requests
            assert rec["request_partition"] == p.partition  # co-partitioned by key
    assert "sub-b" not in {r["result"]["subscription_id"] for r in records}

    m = manifest(out)
    assert [f["day"] for f in m["files"]] == [_day(three_days_ago), _day(yesterday)]
    assert [f["records"] for f in m["files"]] == [3, 6]
    assert all(f["name"].endswith(".part-0001.avro") and f["codec"] == "deflate"
               for f in m["files"])
    for f in m["files"]:
        in_file = [r for r in records if _day(r["result_timestamp"].timestamp() * 1000) == f["day"]]
        for part, rng in f["results"].items():
            offsets = [r["result_offset"] for r in in_file if r["result_partition"] == int(part)]
            assert (rng["first"], rng["last"], rng["records"]) == (
                min(offsets), max(offsets), len(offsets)
            )
    ends: dict[int, int] = {}
    for p in writer.produced:
        ends[p.partition] = max(ends.get(p.partition, 0), p.offset + 1)
    assert {int(k): v for k, v in m["next_offsets"].items()} == ends


def test_avro_tools_reads_deflate_and_zstandard_files(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    # Java's Avro reads what fastavro wrote; the jar comes from Maven Central through mvn
    # (a failure to fetch it fails this test).
    jar = avro_tools.fetch()
    assert jar.is_file()
    now = now_ms()
    writer.story("sub-java-1", now - 2 * DAY_MS)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    _archive(config, tmp_path / "deflate", 0)
    _archive(config, tmp_path / "zstd", 0, "--codec", "zstandard")

    for name, codec in (("deflate", "deflate"), ("zstd", "zstandard")):
        files = manifest(tmp_path / name)["files"]
        assert [f["codec"] for f in files] == [codec]
        lines = avro_tools.tojson(tmp_path / name / files[0]["name"])
        as_java_read = [json.loads(line) for line in lines]
        assert sorted(r["result"]["request_id"] for r in as_java_read) == sorted(
            p.result.request_id for p in writer.produced
        )
        add_user = next(r for r in as_java_read if r["result"]["type"] == "ADD_USER")
        profile = add_user["request"]["com.icareus.bridge.v1.ProvisioningRequest"]["profile"]
        assert profile["com.icareus.bridge.v1.SubscriberProfile"]["email"] == {"string": EMAIL}
        planner_rejection = next(r for r in as_java_read if r["result"]["attempts"] == 0)
        assert planner_rejection["request"] is None


def test_rerun_adds_nothing_and_a_later_cutoff_adds_only_what_is_new(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    now = now_ms()
    ten_days_ago, two_days_ago = now - 10 * DAY_MS, now - 2 * DAY_MS
    writer.story("sub-old", ten_days_ago)
    writer.story("sub-new", two_days_ago)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"

    _archive(config, out, 5)
    first = (out / "manifest.json").read_bytes()
    assert {r["result"]["subscription_id"] for r in read_back(out)} == {"sub-old"}

    printed = _archive(config, out, 5)
    assert "archived 0 results" in printed
    assert (out / "manifest.json").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f["name"] for f in manifest(out)["files"]] + ["manifest.json", ".archive.lock"]
    )

    _archive(config, out, 0)
    records = read_back(out)
    assert Counter(r["result"]["subscription_id"] for r in records) == {"sub-old": 3, "sub-new": 3}

    # A later run adding to a day already archived writes a second part file of that day.
    writer.story("sub-late", two_days_ago + 5000)
    _archive(config, out, 0)
    names = [f["name"] for f in manifest(out)["files"]]
    assert names == [
        f"provisioning-{_day(ten_days_ago)}.part-0001.avro",
        f"provisioning-{_day(two_days_ago)}.part-0001.avro",
        f"provisioning-{_day(two_days_ago)}.part-0002.avro",
    ]
    assert manifest(out)["files"][2]["records"] == 3
    assert len(read_back(out)) == 9
    assert len({(r["result_partition"], r["result_offset"]) for r in read_back(out)}) == 9


def test_an_interrupted_run_leaves_an_archive_the_next_run_completes(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    now = now_ms()
    writer.story("sub-x", now - 4 * DAY_MS)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"
    _archive(config, out, 0)
    before = manifest(out)
    writer.story("sub-y", now - 4 * DAY_MS + 10)
    # What a run killed after writing a part file (and a half-written temporary) but before
    # the manifest leaves behind: the manifest still says what was archived.
    day = _day(now - 4 * DAY_MS)
    (out / f"provisioning-{day}.part-0002.avro").write_bytes(b"Obj\x01 half a file")
    (out / f".provisioning-{day}.part-0003.avro.4242.tmp").write_bytes(b"Obj")

    printed = _archive(config, out, 0)

    assert f"removed provisioning-{day}.part-0002.avro" in printed
    after = manifest(out)
    assert after["files"][:1] == before["files"]
    assert after["files"][1]["name"] == f"provisioning-{day}.part-0002.avro"
    assert Counter(r["result"]["subscription_id"] for r in read_back(out)) == {
        "sub-x": 3, "sub-y": 3
    }
    search = cli("archive", "search", "--json", str(out))
    assert search.returncode == 0, search.stderr


def test_delete_never_passes_the_crm_group_nor_the_bridge_groups(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    now = now_ms()
    for i in range(6):
        writer.story(f"sub-del-{i}", now - 3 * DAY_MS + i)
    writer.story("sub-pending", now - 3 * DAY_MS + 100, pending=True)  # a request with no result
    crm = unique("crm")
    config, groups = config_file(tmp_path, kafka_bootstrap, topics, crm_group=crm)
    results_end = {p: hi for p, (_lo, hi) in watermarks(kafka_bootstrap, topics.results).items()}
    requests_end = {p: hi for p, (_lo, hi) in watermarks(kafka_bootstrap, topics.requests).items()}
    assert all(v > 3 for v in results_end.values()), results_end
    out = tmp_path / "archive"
    before = watermarks(kafka_bootstrap, topics.results)
    # No group has read anything yet: archiving goes ahead, deleting does not.
    printed = _archive(config, out, 0, "--delete")
    assert "deleted" not in printed.replace("nothing deleted", "")
    assert watermarks(kafka_bootstrap, topics.results) == before
    assert len(read_back(out)) == len(writer.produced)

    # CRM has read two results of each partition; the planner all of them; the dispatcher all.
    commit(kafka_bootstrap, crm, topics.results, {p: 2 for p in results_end})
    commit(kafka_bootstrap, groups["planner"], topics.results, results_end)
    commit(kafka_bootstrap, groups["dispatcher"], topics.requests, requests_end)

    printed = _archive(config, out, 0, "--delete")

    assert f"archive.crm_group_id {crm}" in printed
    marks = watermarks(kafka_bootstrap, topics.results)
    assert {p: lo for p, (lo, _hi) in marks.items()} == {p: 2 for p in results_end}
    # Requests: deleted up to the first request whose result is not archived (the pending one),
    # everything before it has its result in the archive.
    pending_partition = next(
        p.partition for p in writer.produced if p.result.subscription_id == "sub-pending"
    )
    rmarks = watermarks(kafka_bootstrap, topics.requests)
    assert rmarks[pending_partition][0] < requests_end[pending_partition]
    archived_ids = {r["result"]["request_id"] for r in read_back(out)}
    remaining = _request_ids_from(kafka_bootstrap, topics.requests, rmarks[pending_partition][0],
                                  pending_partition)
    assert remaining[0] not in archived_ids  # the pending request is the first one kept

    # CRM reads on; the planner lags on partition 0: deletion follows the slower of the two.
    commit(kafka_bootstrap, crm, topics.results, results_end)
    commit(kafka_bootstrap, groups["planner"], topics.results, {0: 3, 1: results_end[1]})
    printed = _archive(config, out, 0, "--delete")
    assert "archived 0 results" in printed
    marks = watermarks(kafka_bootstrap, topics.results)
    assert marks[0][0] == 3
    assert marks[1][0] == manifest(out)["next_offsets"]["1"]
    assert marks[1][0] > 2
    # Nothing archived is lost: the archive still has every result.
    assert len(read_back(out)) == len(writer.produced)


def _request_ids_from(bootstrap: str, topic: str, start: int, partition: int) -> list[str]:
    from confluent_kafka import Consumer, TopicPartition

    from icareus_bridge.codec import default_codec

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("peek"),
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, partition, start)])
        ids: list[str] = []
        while True:
            m = c.poll(10)
            assert m is not None, "no end of partition"
            if m.error():
                return ids
            ids.append(default_codec().decode_request(m.value()).request_id)
    finally:
        c.close()


def test_search_filters_and_never_prints_personal_data(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    now = now_ms()
    writer.story("sub-s1", now - 5 * DAY_MS)
    writer.story("sub-s2", now - DAY_MS)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"
    _archive(config, out, 0)

    one = cli("archive", "search", "--subscription", "sub-s1", "--json", str(out))
    assert one.returncode == 0, one.stderr
    rows = [json.loads(line) for line in one.stdout.splitlines()]
    assert sorted(r["request_id"] for r in rows) == sorted(
        p.result.request_id for p in writer.produced if p.result.subscription_id == "sub-s1"
    )
    rejected = cli("archive", "search", "--state", "REJECTED", "--json", str(out))
    assert {json.loads(line)["state"] for line in rejected.stdout.splitlines()} == {"REJECTED"}
    assert len(rejected.stdout.splitlines()) == 4
    since = datetime.fromtimestamp((now - 2 * DAY_MS) / 1000, UTC).isoformat()
    recent = cli("archive", "search", "--since", since, "--state", "COMPLETED", "--json", str(out))
    recent_subs = [json.loads(line)["subscription_id"] for line in recent.stdout.splitlines()]
    assert recent_subs == ["sub-s2"]
    wanted = writer.produced[0].result.request_id
    by_id = cli("archive", "search", "--request-id", wanted, "--json", str(out))
    assert [json.loads(line)["request_id"] for line in by_id.stdout.splitlines()] == [wanted]

    table = cli("archive", "search", str(out))
    assert table.returncode == 0, table.stderr
    assert "sub-s1" in table.stdout and "ADD_USER" in table.stdout
    everything = cli("archive", "search", "--json", str(out))
    for printed in (table.stdout + table.stderr, everything.stdout + everything.stderr):
        for personal in (FIRST_NAME, LAST_NAME, EMAIL, PHONE, "Limassol"):
            assert personal not in printed


def test_unreachable_broker_exits_4_naming_the_address(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config, _ = config_file(
        tmp_path, f"127.0.0.1:{port}", Topics("r", "q"), kafka_timeout_seconds=3
    )
    done = cli("archive", "--config", str(config), "--older-than", "0",
               "--out", str(tmp_path / "a"))

    assert done.returncode == 4, done.stderr
    assert f"kafka.bootstrap_servers=127.0.0.1:{port}" in done.stderr
    assert "unreachable" in done.stderr


def test_a_missing_topic_exits_2_naming_the_key(kafka_bootstrap: str, tmp_path: Path) -> None:
    config, _ = config_file(
        tmp_path, kafka_bootstrap, Topics(unique("no-such-results"), unique("no-such-requests"))
    )
    done = cli("archive", "--config", str(config), "--older-than", "0",
               "--out", str(tmp_path / "a"))

    assert done.returncode == 2, done.stderr
    assert "topics.results" in done.stderr


def test_an_archive_of_other_topics_is_refused_naming_out(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    writer.story("sub-o", now_ms() - DAY_MS)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"
    _archive(config, out, 0)
    with archive_topics(kafka_bootstrap) as other:
        other_config, _ = config_file(tmp_path, kafka_bootstrap, other)
        done = cli("archive", "--config", str(other_config), "--older-than", "0",
                   "--out", str(out))

    assert done.returncode == 2
    assert "--out" in done.stderr and topics.results in done.stderr


def test_a_result_that_does_not_decode_stops_its_partition_and_exits_1(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    now = now_ms()
    writer.story("sub-good", now - 2 * DAY_MS)
    partition = writer.produced[0].partition
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topics.results, key=b"sub-good", value=b"not avro", partition=partition,
              timestamp=now - 2 * DAY_MS + 10)
    assert p.flush(30) == 0
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"

    done = cli("archive", "--config", str(config), "--older-than", "0", "--out", str(out))

    assert done.returncode == 1, done.stdout + done.stderr
    bad_offset = max(r.offset for r in writer.produced) + 2  # after the transaction's marker
    assert f"{topics.results} partition {partition} offset {bad_offset}" in done.stderr
    assert len(read_back(out)) == 3
    assert manifest(out)["next_offsets"][str(partition)] == bad_offset - 1


def test_a_run_killed_midway_is_completed_by_the_next_run_without_duplicates(
    kafka_bootstrap: str, topics: Topics, writer: Writer, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import time

    from tests.integration.archive_support import BRIDGE

    now = now_ms()
    for day in range(1, 25):  # one part file per day: the run writes files one by one
        writer.story(f"sub-k{day}", now - day * DAY_MS)
    config, _ = config_file(tmp_path, kafka_bootstrap, topics)
    out = tmp_path / "archive"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    proc = subprocess.Popen(
        [str(BRIDGE), "archive", "--config", str(config), "--older-than", "0", "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.suffix == ".avro" or p.name.endswith(".tmp")
                                    for p in out.iterdir()):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    _archive(config, out, 0)

    records = read_back(out)
    assert sorted((r["result_partition"], r["result_offset"]) for r in records) == sorted(
        (p.partition, p.offset) for p in writer.produced
    )
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".avro") == sorted(
        f["name"] for f in manifest(out)["files"]
    )
    assert cli("archive", "search", "--json", str(out)).returncode == 0
