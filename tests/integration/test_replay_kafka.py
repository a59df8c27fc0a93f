"""`icareus-bridge replay` as a subprocess on the real broker: dead letters written with the
bridge's own header writer, the dry run, a real run (bytes untouched, original partition, count
up, order per subscription), the ledger (a rerun replays nothing), the loop guard and --force,
SIGKILL mid-run and a rerun (nothing republished twice), --history, and every error exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from icareus_bridge.codec import default_codec
from icareus_bridge.config import default_config_path
from icareus_bridge.core.model import ProvisioningRequest, RequestType, SubscriberProfile
from icareus_bridge.pipeline.dead_letter import Origin, dead_letter_headers

pytestmark = pytest.mark.kafka

BRIDGE = Path(sys.executable).parent / "icareus-bridge"
CODEC = default_codec()
PARTITIONS = 2
NOW = int(time.time() * 1000)
SECRET_NAME = "Zacharoula"  # the subscriber's first name: personal data, never printed


@dataclass
class Rig:
    bootstrap: str
    config_path: Path
    topics: dict[str, str]
    producer: Producer

    def replay(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BRIDGE), "replay", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(env),
            stdin=subprocess.DEVNULL,
        )

    def dead_letter(
        self,
        sub: str,
        request_id: str,
        *,
        partition: int,
        reason: str = "RETRIES_EXHAUSTED",
        behind: str | None = None,
        replays: int = 0,
        stage: str = "dispatch",
        value: bytes | None = None,
        original_topic: str | None = None,
        original_offset: int = 0,
    ) -> bytes:
        """A dead letter as the dispatcher writes it; returns its value bytes."""
        if value is None:
            value = CODEC.encode_request(request(sub, request_id))
        headers = dead_letter_headers(
            stage,  # type: ignore[arg-type]
            reason,
            "Icareus unreachable: connect error (4 attempts)" if reason != "PARKED" else "parked",
            Origin(original_topic or self.topics["requests"], partition, original_offset, NOW),
            "icareus-bridge-dispatcher",
            now_ms=NOW,
            attempts=4 if reason != "PARKED" else 0,
            http_status=503 if reason != "PARKED" else None,
            replay_count=replays,
            parked_behind=behind,
        )
        self.producer.produce(self.topics["dlq"], key=sub.encode(), value=value, headers=headers)
        self.producer.flush(10)
        return value


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    env.update(extra or {})
    return env


def request(
    sub: str, request_id: str, type_: RequestType = RequestType.ADD_USER
) -> ProvisioningRequest:
    return ProvisioningRequest(
        request_id=request_id,
        number=request_id,
        type=type_,
        subscription_id=sub,
        subscription_number=f"N-{sub}",
        distributor="ICAREUS-VP1",
        account_key=f"N-{sub}-ICAREUS-VP1",
        event_id=f"ev-{request_id}",
        action_code="BECOME_SUBSCRIBER",
        sequence=0,
        created_at=NOW,
        profile=SubscriberProfile(
            first_name=SECRET_NAME, last_name="Papadopoulou", email="z@example.org"
        )
        if type_ is RequestType.ADD_USER
        else None,
    )


def write_config(path: Path, bootstrap: str, topics: dict[str, str], **sections: Any) -> Path:
    cfg: dict[str, Any] = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    cfg["kafka"].update(
        {
            "bootstrap_servers": bootstrap,
            "partitions": PARTITIONS,
            "transactional_id_prefix": f"replay-test-{uuid.uuid4().hex[:8]}",
        }
    )
    cfg["topics"].update(topics)
    cfg["icareus"]["key"] = "test-key"
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture
def rig(kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> Iterator[Rig]:
    topics = {
        "input": make_topic("replay-input", partitions=PARTITIONS),
        "requests": make_topic("replay-requests", partitions=PARTITIONS),
        "dlq": make_topic("replay-dlq", partitions=PARTITIONS),
        # Not created here: replay creates its log when missing.
        "replay_log": f"replay-log-{uuid.uuid4().hex[:12]}",
    }
    path = write_config(tmp_path / "bridge.yaml", kafka_bootstrap, topics)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    yield Rig(kafka_bootstrap, path, topics, producer)
    producer.flush(5)


def read_all(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> list[Any]:
    """Every committed record of `topic` (read_committed), in partition and offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        out: list[Any] = []
        pending = set()
        tps = []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                pending.add(p)
                tps.append(TopicPartition(topic, p, low))
        consumer.assign(tps)
        deadline = time.monotonic() + 30
        while pending:
            assert time.monotonic() < deadline, f"{topic}: not read to its end"
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    pending.discard(msg.partition())
                    continue
                out.append(msg)
        return sorted(out, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def hdr(msg: Any, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name:
            return bytes(value).decode()
    return None


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the dry run -----------------------------------------------------------------------------


def test_dry_run_lists_every_dead_letter_with_totals_and_changes_nothing(rig: Rig) -> None:
    rig.dead_letter("S1", "r1", partition=1)
    rig.dead_letter("S1", "r2", partition=1, reason="PARKED", behind="r1")
    rig.dead_letter("S2", "r3", partition=0)

    text = rig.replay("--dry-run")
    as_json = rig.replay("--dry-run", "--json")

    assert text.returncode == 0, text.stderr
    assert "subscription=S1 request=r1 type=ADD_USER stage=dispatch reason=RETRIES_EXHAUSTED" in (
        text.stdout
    )
    assert "parked behind request r1" in text.stdout
    assert "http=503" in text.stdout and "connect error" in text.stdout
    assert "dispatch:RETRIES_EXHAUSTED 2" in text.stdout and "dispatch:PARKED 1" in text.stdout
    lines = json_lines(as_json.stdout)
    rows, summary = lines[:-1], lines[-1]
    assert {(r["subscription_id"], r["request_id"], r["reason"], r["parks_key"]) for r in rows} == {
        ("S1", "r1", "RETRIES_EXHAUSTED", True),
        ("S1", "r2", "PARKED", False),
        ("S2", "r3", "RETRIES_EXHAUSTED", True),
    }
    assert all(r["attempts"] is not None and r["last_failure_at"] for r in rows)
    assert summary["totals"]["by_stage"] == {"dispatch": 3}
    assert summary["would_replay"] == 3
    for out in (text.stdout + text.stderr, as_json.stdout + as_json.stderr):
        assert SECRET_NAME not in out and "test-key" not in out
    assert read_all(rig.bootstrap, rig.topics["requests"]) == []


def test_dry_run_filters_combine(rig: Rig) -> None:
    rig.dead_letter("S1", "r1", partition=1)
    rig.dead_letter("S2", "r2", partition=0)
    rig.dead_letter("S2", "r3", partition=0, reason="PARKED", behind="r2")

    out = rig.replay("--dry-run", "--json", "--subscription", "S2", "--reason", "RETRIES_EXHAUSTED")

    rows = json_lines(out.stdout)[:-1]
    assert [r["request_id"] for r in rows] == ["r2"]
    assert json_lines(out.stdout)[-1]["skipped"]["not_matched"] == 2


# --- a real run ------------------------------------------------------------------------------


def test_replay_republishes_untouched_in_order_once_and_audits_the_run(rig: Rig) -> None:
    values = [
        rig.dead_letter("S1", "r1", partition=1, original_offset=10),
        rig.dead_letter("S1", "r2", partition=1, reason="PARKED", behind="r1", original_offset=11),
        rig.dead_letter("S1", "r3", partition=1, reason="PARKED", behind="r1", original_offset=12),
        rig.dead_letter("S2", "r4", partition=0, original_offset=5),
    ]
    dlq = read_all(rig.bootstrap, rig.topics["dlq"])

    first = rig.replay()

    assert first.returncode == 0, first.stderr
    assert "replayed 4 of 4" in first.stdout
    out = read_all(rig.bootstrap, rig.topics["requests"])
    assert len(out) == 4
    by_value = {m.value(): m for m in out}
    assert set(by_value) == set(values)  # bytes untouched
    of = {f"{m.partition()}@{m.offset()}": m for m in dlq}
    for m in out:
        src = of[hdr(m, "dlq.replay.of") or ""]
        assert m.value() == src.value() and m.key() == src.key()
        assert m.partition() == int(hdr(src, "dlq.original.partition") or -1)
        assert hdr(m, "dlq.replay.count") == "1"
    s1 = [CODEC.decode_request(m.value()).request_id for m in out if m.key() == b"S1"]
    assert s1 == ["r1", "r2", "r3"]

    second = rig.replay("--json")
    assert second.returncode == 0, second.stderr
    record = json_lines(second.stdout)[-1]
    assert record["counts"]["replayed"] == 0
    assert record["counts"]["skipped"]["already_replayed"] == 4
    assert len(read_all(rig.bootstrap, rig.topics["requests"])) == 4

    # The replayed r4 failed again: a new dead letter, replayable again.
    rig.dead_letter("S2", "r4", partition=0, replays=1, original_offset=99)
    third = rig.replay("--json")
    assert json_lines(third.stdout)[-1]["counts"]["replayed"] == 1
    again = [m for m in read_all(rig.bootstrap, rig.topics["requests"]) if m.key() == b"S2"]
    assert [hdr(m, "dlq.replay.count") for m in again] == ["1", "2"]

    history = rig.replay("--history", "--json")
    assert history.returncode == 0, history.stderr
    runs = json_lines(history.stdout)
    assert [r["counts"]["replayed"] for r in runs] == [4, 0, 1]
    assert all(r["status"] == "completed" and "@" in r["who"] and r["finished_at"] for r in runs)
    [last] = json_lines(rig.replay("--history", "--json", "--limit", "1").stdout)
    assert last["run_id"] == runs[-1]["run_id"]
    text = rig.replay("--history")
    assert text.stdout.count(" completed by ") == 3


def test_loop_guard_refuses_at_max_replays_and_force_overrides(rig: Rig) -> None:
    rig.dead_letter("S1", "r1", partition=0, replays=3)
    rig.dead_letter("S2", "r2", partition=1, replays=1)

    refused = rig.replay()

    assert refused.returncode == 1, refused.stderr
    assert "refused MAX_REPLAYS 1" in refused.stdout
    assert "subscription=S1 request=r1" in refused.stdout and "--force" in refused.stdout
    assert len(read_all(rig.bootstrap, rig.topics["requests"])) == 1

    forced = rig.replay("--force")
    assert forced.returncode == 0, forced.stderr
    counts = Counter(
        hdr(m, "dlq.replay.count") for m in read_all(rig.bootstrap, rig.topics["requests"])
    )
    assert counts == {"2": 1, "4": 1}


def test_max_replays_comes_from_config_and_env(rig: Rig) -> None:
    rig.dead_letter("S1", "r1", partition=0, replays=1)

    out = rig.replay("--dry-run", "--json", env={"ICAREUS_BRIDGE__DLQ__MAX_REPLAYS": "1"})

    assert out.returncode == 1
    assert json_lines(out.stdout)[0]["refused"] == "MAX_REPLAYS"


def test_decode_stage_dead_letters_need_force(rig: Rig) -> None:
    rig.dead_letter(
        "S1",
        "-",
        partition=0,
        stage="decode",
        reason="NOT_AVRO",
        value=b'{"not": "avro"}',
        original_topic=rig.topics["input"],
    )

    refused = rig.replay()
    assert refused.returncode == 1 and "STAGE_NEEDS_FORCE" in refused.stdout

    forced = rig.replay("--force")
    assert forced.returncode == 0, forced.stderr
    [back] = read_all(rig.bootstrap, rig.topics["input"])
    assert back.value() == b'{"not": "avro"}'


# --- interrupted ------------------------------------------------------------------------------


def test_sigkill_mid_run_then_rerun_republishes_nothing_twice(rig: Rig) -> None:
    n = 30
    for i in range(n):
        rig.dead_letter(f"S{i % 5}", f"r{i}", partition=i % PARTITIONS, reason="DISPATCH_FAILED")
    proc = subprocess.Popen(
        [str(BRIDGE), "replay", "--config", str(rig.config_path), "--rate", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first committed transaction
        assert line.startswith("replayed "), line + proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    before = read_all(rig.bootstrap, rig.topics["requests"])
    assert 0 < len(before) < n

    rerun = rig.replay()

    assert rerun.returncode == 0, rerun.stderr
    after = read_all(rig.bootstrap, rig.topics["requests"])
    replayed_of = Counter(hdr(m, "dlq.replay.of") for m in after)
    assert len(after) == n and set(replayed_of.values()) == {1}
    runs = json_lines(rig.replay("--history", "--json").stdout)
    assert [r["status"] for r in runs] == ["interrupted", "completed"]
    assert runs[0]["counts"]["replayed"] == len(before)
    assert runs[1]["counts"]["replayed"] == n - len(before)


# --- errors -----------------------------------------------------------------------------------


def test_unreachable_kafka_exits_4_naming_the_bootstrap_address(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    path = write_config(tmp_path / "b.yaml", address, {})
    for args in (["--dry-run"], [], ["--history"]):
        out = subprocess.run(
            [str(BRIDGE), "replay", "--config", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(None),
        )
        assert out.returncode == 4, (args, out.stderr)
        assert address in out.stderr and "unreachable" in out.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "last tuesday"], "--since"),
        (["--until", "2026-13-45"], "--until"),
        (["--stage", "dispatching"], "--stage"),
        (["--limit", "0"], "--limit"),
        (["--rate", "-3"], "--rate"),
        (["--history", "--subscription", "S1"], "--subscription"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(rig: Rig, args: list[str], named: str) -> None:
    out = rig.replay(*args)

    assert out.returncode == 2, out.stderr
    assert named in out.stderr


def test_config_errors_exit_2_naming_the_key(rig: Rig, tmp_path: Path) -> None:
    bad_env = rig.replay("--dry-run", env={"ICAREUS_BRIDGE__DLQ__MAX_REPLAYS": "-1"})
    assert bad_env.returncode == 2 and "dlq.max_replays" in bad_env.stderr

    no_dlq = write_config(
        tmp_path / "nodlq.yaml", rig.bootstrap, {"dlq": f"no-such-{uuid.uuid4().hex[:8]}"}
    )
    out = subprocess.run(
        [str(BRIDGE), "replay", "--config", str(no_dlq), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(None),
    )
    assert out.returncode == 2 and "topics.dlq" in out.stderr


def test_sigint_commits_what_it_holds_stops_with_130_and_a_rerun_finishes(rig: Rig) -> None:
    n = 20
    for i in range(n):
        rig.dead_letter(f"S{i % 4}", f"r{i}", partition=i % PARTITIONS, reason="DISPATCH_FAILED")
    proc = subprocess.Popen(
        [str(BRIDGE), "replay", "--config", str(rig.config_path), "--rate", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("replayed ")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    assert proc.returncode == 130, err
    assert " interrupted: replayed " in out
    stopped = len(read_all(rig.bootstrap, rig.topics["requests"]))
    [run] = json_lines(rig.replay("--history", "--json").stdout)
    assert run["status"] == "interrupted" and run["counts"]["replayed"] == stopped < n

    assert rig.replay().returncode == 0
    after = read_all(rig.bootstrap, rig.topics["requests"])
    assert len(after) == n == len({hdr(m, "dlq.replay.of") for m in after})


def test_a_terminal_gets_a_progress_bar(rig: Rig) -> None:
    import pty

    for i in range(3):
        rig.dead_letter(f"S{i}", f"r{i}", partition=i % PARTITIONS)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [str(BRIDGE), "replay", "--config", str(rig.config_path)],
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
            env=_env({"COLUMNS": "100", "TERM": "xterm"}),
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")

    assert proc.returncode == 0, proc.stderr
    assert "replaying" in screen and "3/3" in screen
    assert "replayed 3/3" not in screen  # the plain progress lines are for pipes
    assert "replayed 3 of 3" in screen


def test_a_second_run_fences_the_first_which_stops_with_4_and_nothing_goes_twice(
    rig: Rig,
) -> None:
    n = 20
    for i in range(n):
        rig.dead_letter(f"S{i % 4}", f"r{i}", partition=i % PARTITIONS, reason="DISPATCH_FAILED")
    slow = subprocess.Popen(
        [str(BRIDGE), "replay", "--config", str(rig.config_path), "--rate", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
    )
    try:
        assert slow.stdout is not None
        assert slow.stdout.readline().startswith("replayed ")
        fast = rig.replay()
        _, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(timeout=10)

    assert fast.returncode == 0, fast.stderr
    assert slow.returncode == 4, err
    assert rig.bootstrap in err and "run replay again" in err
    after = read_all(rig.bootstrap, rig.topics["requests"])
    assert len(after) == n == len({hdr(m, "dlq.replay.of") for m in after})
