"""The `icareus-bridge` console script: its command surface and how it reports a bad --config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "icareus-bridge"
COMMANDS = ("run", "simulator", "explain", "replay", "archive", "reset", "status")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The installed console script when there is one, so the packaging entry point is covered too.
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "icareus_bridge.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_help_lists_every_command() -> None:
    result = _cli("--help")

    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_config_option(command: str) -> None:
    result = _cli(command, "--help")

    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_run_with_missing_config_exits_2_naming_the_option() -> None:
    result = _cli("run", "--config", "/nonexistent/bridge.yaml")

    assert result.returncode == 2
    assert "--config" in result.stderr
