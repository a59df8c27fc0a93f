"""The figure writer of the drills: it rewrites the drill table of RELIABILITY.md between its
markers from the JSON figures the drills leave, and nothing else in the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import drill_figures  # tools/ is not a package: put on sys.path just above

FIGURES = {
    "drill": "icareus_429",
    "size": "full",
    "finished_at": "2026-12-01 10:00 UTC",
    "load_average": 2.5,
    "events": 4500,
    "requests": 6000,
    "results": 6000,
    "duration_seconds": 95.4,
    "lost": 0,
    "duplicated_effects": 0,
    "dead_letters": 0,
    "dlq_reasons": {},
    "duplicates_suppressed": 3,
    "errors_injected": 2000,
    "replayed": 0,
    "accounts": 1500,
    "fault": {"rates": {"*": {"http_429": 0.9}}},
    "switch_period_seconds": 3.0,
    "switches": 30,
    "fault_seconds": 90.0,
    "retries": {"throttled": 2000},
    "time_to_recover_seconds": 1.5,
}


def test_rows_replace_only_the_table_between_the_markers(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "icareus_429.json").write_text(json.dumps(FIGURES))
    rows = drill_figures.render("full", tmp_path)
    before = (
        f"# Reliability\n\nintro\n\n{drill_figures.START}\n| old row |\n"
        f"{drill_figures.END}\n\n## Hostile input\n"
    )
    after = drill_figures.update(before, rows)
    assert "| old row |" not in after
    assert after.startswith("# Reliability\n\nintro\n\n" + drill_figures.START)
    assert after.endswith(drill_figures.END + "\n\n## Hostile input\n")
    row = next(line for line in after.splitlines() if line.startswith("| Icareus 429"))
    assert "| 4,500 | 95 s | 0 | 0 | 0 | 3 | 1.5 s |" in row
    assert "throttled 2,000" in row


def test_a_file_without_the_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match="marker"):
        drill_figures.update("# Reliability\n", ["| a |"])
