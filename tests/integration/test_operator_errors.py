"""The bad inputs of the operator commands (`replay`, `archive`, `reset`, `status`) that the
commands' own tests leave out, through the console script: a `--config` that is not there, bad
flags of `reset` and `status`, a configuration value that does not validate, an unreachable
broker (one clear line naming the address, no raw Kafka client noise), ids nothing is known
about (`replay` and `archive search` match nothing and say so), and a state topic that does not
exist. (Unknown ids of `reset`/`status` and a damaged archive file have their tests in
`test_reset_cli.py`, `test_status_cli.py` and `tests/unit/test_archive.py`.)"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import BRIDGE, bridge_config, free_port

OPERATOR_COMMANDS: dict[str, list[str]] = {
    "replay": ["replay", "--dry-run"],
    "archive": ["archive", "--older-than", "0", "--out", "{tmp}/archive"],
    "reset": ["reset", "--subscription", "S-1"],
    "reset --dry-run": ["reset", "--subscription", "S-1", "--dry-run"],
    "status": ["status", "--subscription", "S-1"],
}


def cli(
    args: list[str], config: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`icareus-bridge <command> [--config PATH] <rest>`, without the caller's overrides."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    environ.update(env or {})
    command = [str(BRIDGE), args[0]]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        [*command, *args[1:]],
        capture_output=True,
        text=True,
        timeout=90,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


def with_tmp(args: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in args]


def write_config(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# --- no broker needed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--dry-run"],
        ["archive", "--older-than", "0", "--out", "/tmp/x"],
        ["archive", "search", "/tmp"],
        ["reset", "--all"],
        ["status", "--subscription", "S-1"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_config_file_that_is_not_there_exits_2_naming_config(args: list[str]) -> None:
    missing = Path("/nonexistent") / f"{uuid.uuid4().hex[:6]}.yaml"

    done = cli(args, config=missing)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "--config" in done.stderr and str(missing) in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["reset"], "--subscription --all"),
        (["reset", "--dry-run"], "--subscription --all"),
        (["reset", "--subscription", "S-1", "--all"], "--all"),
        (["reset", "--all", "--rate", "0"], "--rate"),
        (["reset", "--all", "--rate", "fast"], "--rate"),
        (["reset", "--subscription"], "--subscription"),
        (["status"], "--subscription"),
        (["status", "--subscription", "S-1", "--results", "-1"], "--results"),
        (["status", "--subscription", "S-1", "--results", "ten"], "--results"),
        (["status", "--subscription", "S-1", "--all"], "--all"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_flags_of_reset_and_status_exit_2_naming_the_argument(
    args: list[str], named: str
) -> None:
    done = cli(args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", sorted(OPERATOR_COMMANDS))
def test_a_configuration_value_that_does_not_validate_exits_2_naming_the_key(
    command: str, tmp_path: Path
) -> None:
    done = cli(
        with_tmp(OPERATOR_COMMANDS[command], tmp_path),
        env={"ICAREUS_BRIDGE__KAFKA__PARTITIONS": "zero"},
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "kafka.partitions" in done.stderr
    assert "ICAREUS_BRIDGE__KAFKA__PARTITIONS" in done.stderr


@pytest.mark.parametrize("command", sorted(OPERATOR_COMMANDS))
def test_an_unreachable_broker_exits_4_with_one_line_naming_the_address(
    command: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = bridge_config(address, "http://127.0.0.1:1/api")
    config = write_config(tmp_path, cfg)

    done = cli(with_tmp(OPERATOR_COMMANDS[command], tmp_path), config=config)

    assert done.returncode == 4, done.stdout + done.stderr
    assert address in done.stderr and "unreachable" in done.stderr
    # The operator reads one message of the command's own, not the Kafka client's log lines.
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"icareus-bridge {command.split()[0]}: ")
    assert done.stdout == ""


# --- against the broker ----------------------------------------------------------------------


def topics_config(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> tuple[dict[str, Any], Path]:
    """The bridge's configuration on new, empty topics of its own."""
    cfg = bridge_config(kafka_bootstrap, "http://127.0.0.1:1/api")
    cfg["kafka"]["partitions"] = 3
    for name in ("input", "requests", "results", "dlq"):
        cfg["topics"][name] = make_topic(f"err-{name}", partitions=3)
    cfg["topics"]["state"] = make_topic("err-state", partitions=3, compacted=True)
    cfg["topics"]["replay_log"] = f"err-replay-log-{uuid.uuid4().hex[:8]}"
    cfg["kafka"]["transactional_id_prefix"] = f"err-{uuid.uuid4().hex[:8]}"
    return cfg, write_config(tmp_path, cfg)


@pytest.mark.kafka
def test_replay_of_ids_the_dlq_does_not_hold_replays_nothing_and_says_so(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    _, config = topics_config(kafka_bootstrap, make_topic, tmp_path)
    for selector in (["--subscription", "no-such-sub"], ["--request-id", "no-such-request"]):
        dry = cli(["replay", *selector, "--dry-run", "--json"], config=config)
        assert dry.returncode == 0, dry.stderr
        [totals] = [json.loads(line) for line in dry.stdout.splitlines()]
        assert totals["totals"]["dead_letters"] == 0, totals

        real = cli(["replay", *selector, "--json"], config=config)
        assert real.returncode == 0, real.stderr
        audit = json.loads(real.stdout.splitlines()[-1])
        assert audit["counts"]["matched"] == 0 and audit["counts"]["replayed"] == 0
        text = cli(["replay", *selector], config=config)
        assert text.returncode == 0, text.stderr
        assert "replayed 0 of 0" in text.stdout


@pytest.mark.kafka
def test_status_and_reset_without_a_state_topic_exit_2_naming_the_key(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    cfg, _ = topics_config(kafka_bootstrap, make_topic, tmp_path)
    missing = f"no-such-state-{uuid.uuid4().hex[:8]}"
    cfg["topics"]["state"] = missing
    config = write_config(tmp_path, cfg)
    for args in (["status", "--subscription", "S-1"], ["reset", "--subscription", "S-1"]):
        done = cli(args, config=config)

        assert done.returncode == 2, (args, done.stdout + done.stderr)
        assert "topics.state" in done.stderr and missing in done.stderr, done.stderr


def test_archive_search_takes_config_after_search_as_every_command_does(tmp_path: Path) -> None:
    from tests.unit.test_archive import _archive

    out, _ = _archive(tmp_path)
    config = write_config(tmp_path, bridge_config("127.0.0.1:1", "http://127.0.0.1:1/api"))
    for args in (
        ["archive", "search", "--config", str(config), "--subscription", "sub-2", "--json"],
        ["archive", "--config", str(config), "search", "--subscription", "sub-2", "--json"],
    ):
        found = cli([*args, str(out)])

        assert found.returncode == 0, found.stderr
        assert [json.loads(line)["subscription_id"] for line in found.stdout.splitlines()] == [
            "sub-2"
        ]
    missing = cli(["archive", "search", "--config", "/nonexistent/b.yaml", str(out)])
    assert missing.returncode == 2
    assert "--config" in missing.stderr and "/nonexistent/b.yaml" in missing.stderr


def test_archive_search_for_an_unknown_subscription_finds_nothing_and_says_so(
    tmp_path: Path,
) -> None:
    from tests.unit.test_archive import _archive

    out, _ = _archive(tmp_path)
    found = cli(["archive", "search", "--subscription", "no-such-sub", "--json", str(out)])

    assert found.returncode == 0, found.stderr
    assert found.stdout == ""
    assert "0 archived results matched" in found.stderr
