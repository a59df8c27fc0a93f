"""Writes the figures of the last fault drills into docs/RELIABILITY.md.

Each drill in `tests/drills/` leaves `var/drills/<size>/<drill>.json` when it passes; this
script turns those of one size (`full` by default, what `make drills` runs) into the rows of the
drill table, between the two marker lines of RELIABILITY.md, and touches nothing else there. A
drill without full figures (one that does not pass at full size yet) shows its short run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURES_DIR = REPO_ROOT / "var" / "drills"
RELIABILITY_MD = REPO_ROOT / "docs" / "RELIABILITY.md"
START = "<!-- drill figures: rewritten by tools/drill_figures.py -->"
END = "<!-- end of drill figures -->"
HEADER = (
    "| drill | events | duration | lost | duplicated effects | dead letters | "
    "duplicates suppressed | time to recover | notes |",
    "|---|---|---|---|---|---|---|---|---|",
)
ORDER = (
    "scale_out",
    "broker_stop",
    "broker_freeze",
    "icareus_flapping",
    "icareus_slow",
    "icareus_429",
    "icareus_outage",
)
TITLES = {
    "scale_out": "Scale-out (3 processes, kill -9 ×2)",
    "broker_stop": "Broker stopped, started on its data",
    "broker_freeze": "Broker frozen (SIGSTOP)",
    "icareus_flapping": "Icareus flapping",
    "icareus_slow": "Icareus slower than the timeout",
    "icareus_429": "Icareus 429 storms",
    "icareus_outage": "Icareus outage > retry budget, then replay",
}


def _notes(f: dict[str, Any]) -> str:
    name = f["drill"]
    if name == "scale_out":
        return (
            f"{f['requests']:,} requests; first kill: back in {f['first_kill_restart_seconds']} s "
            f"(own transactions fenced), its partitions stalled {f['first_kill_stall_seconds']} s; "
            f"second kill (held planner {f['busiest_partitions'][0]}, dispatcher "
            f"{f['busiest_partitions'][1]}): partitions reassigned after "
            f"{f['second_kill_reassigned_seconds']} s, read_committed stall "
            f"{f['second_kill_stall_seconds']} s (transaction.timeout.ms "
            f"{f['transaction_timeout_ms']:,})"
        )
    if name == "broker_stop":
        return (
            f"stopped {f['stop_seconds']:.0f} s (the JVM took {f['stop_broker_restart_seconds']} s "
            f"to start again); results {f['stop_results_resumed_after_back_seconds']} s after it "
            f"was back; /readyz false, then true {f['stop_ready_again_after_back_seconds']} s "
            "after"
        )
    if name == "broker_freeze":
        return (
            f"frozen {f['freeze_seconds']:.0f} s: results again "
            f"{f['freeze_results_resumed_after_thaw_seconds']} s after SIGCONT; /readyz "
            f"{'went false' if f['freeze_readyz_went_false'] else 'stayed true'}; demo.py through "
            f"a {f['demo_frozen_seconds']} s freeze: exit {f['demo_exit']}"
        )
    if name == "icareus_outage":
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(f["dlq_reasons"].items()))
        return (
            f"outage {f['outage_seconds']:.0f} s, retry budget {f['retry_budget_seconds']:.0f} s: "
            f"{reasons}; replay put {f['replayed']:,} back, converged "
            f"{f['replay_converged_seconds']} s after it started"
        )
    retries = ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("retries", {}).items())) or "none"
    period = f.get("switch_period_seconds")
    switching = f"switched every {period:.0f} s, " if period else ""
    return (
        f"{f['fault_seconds']:.0f} s of faults {json.dumps(f['fault'], sort_keys=True)}, "
        f"{switching}{f['errors_injected']:,} errors injected; retries: {retries}"
    )


def row(f: dict[str, Any]) -> str:
    return (
        f"| {TITLES.get(f['drill'], f['drill'])}{' (short run)' if f.get('fallback') else ''} | "
        f"{f['events']:,} | "
        f"{f['duration_seconds']:.0f} s | {f['lost']} | {f['duplicated_effects']} | "
        f"{f['dead_letters']:,} | {f['duplicates_suppressed']:,} | "
        f"{f['time_to_recover_seconds']} s | {_notes(f)}; {f['finished_at']}, load "
        f"{f['load_average']} |"
    )


def render(size: str, folder: Path = FIGURES_DIR) -> list[str]:
    """The table: one row per drill of `size`; for `full`, a drill with no full figures (one
    that cannot pass at full size yet) gets its short run's row, marked so."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted((folder / size).glob("*.json"))}
    if size == "full":
        for p in sorted((folder / "short").glob("*.json")):
            if p.stem not in found:
                found[p.stem] = {**json.loads(p.read_text()), "fallback": True}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return [*HEADER, *(row(found[n]) for n in names)]


def update(text: str, rows: list[str]) -> str:
    lines = text.splitlines()
    if START not in lines or END not in lines:
        raise SystemExit(f"drill_figures: {RELIABILITY_MD} lacks the marker lines {START!r}")
    start, end = lines.index(START), lines.index(END)
    return "\n".join([*lines[: start + 1], *rows, *lines[end:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drill_figures.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("short", "full"), default="full")
    parser.add_argument("--check", action="store_true", help="print the rows, write nothing")
    args = parser.parse_args(argv)
    rows = render(args.size)
    if len(rows) == len(HEADER):
        print(f"drill_figures: no figures in {FIGURES_DIR / args.size}", file=sys.stderr)
        return 1
    if args.check:
        print("\n".join(rows))
        return 0
    RELIABILITY_MD.write_text(update(RELIABILITY_MD.read_text(), rows))
    print(
        f"{len(rows) - len(HEADER)} drill rows written to {RELIABILITY_MD.relative_to(REPO_ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
