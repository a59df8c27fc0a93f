"""Fault drills: `--drill-size short` (the default, what `make test` and CI run) or `full`
(`make drills`, the figures in docs/RELIABILITY.md). The environment variable
`ICAREUS_DRILL_SIZE` sets the same where the option cannot be given (a run from the repo root,
where this file is not loaded before the command line is parsed)."""

from __future__ import annotations

import faulthandler
import os
import signal

import pytest

SIZES = ("short", "full")

# `kill -USR1 <pytest pid>` prints where every thread of a drill is (a drill that hangs).
faulthandler.register(signal.SIGUSR1, all_threads=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--drill-size",
        choices=SIZES,
        default=None,
        help="short (CI, the default) or full (make drills); env ICAREUS_DRILL_SIZE",
    )


@pytest.fixture(scope="session")
def drill_size(request: pytest.FixtureRequest) -> str:
    try:
        chosen = request.config.getoption("--drill-size")
    except ValueError:  # the option was not registered (run from the repo root)
        chosen = None
    size = chosen or os.environ.get("ICAREUS_DRILL_SIZE", "short")
    if size not in SIZES:
        raise pytest.UsageError(f"ICAREUS_DRILL_SIZE must be one of {SIZES}, not {size!r}")
    return str(size)
