"""Old against new in one process: decode + validate + plan of the same Avro blobs by this
checkout's code and by the code of an earlier commit, interleaved run by run on one core.

The earlier commit's `src/icareus_bridge` is extracted with `git archive` into a temporary
directory and imported as the package `icareus_bridge_ab_old` (every `icareus_bridge` in its
sources renamed), so both versions live side by side in this interpreter and read the very same
bytes (the wire format did not change). Each run times one version over the whole stream, state
kept per subscription as the planner keeps it; runs alternate old, new, new, old, ... so that a
drift of the shared machine falls on both. Before timing, both versions' decisions on the
stream are compared (requests, rejections, state as JSON): a faster version that decided
otherwise would not count. Prints medians and the new/old ratio and records them in
docs/BENCHMARKS.md.

    python bench/plan_ab.py [--old REF] [--events N] [--runs R] [--no-record]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import machine_info  # bench/machine_info.py, beside this script
import plan_bench
from icareus_bridge.codec import Codec
from icareus_bridge.config import default_config_path, load_settings
from icareus_bridge.core.plan import plan

ROOT = Path(__file__).resolve().parents[1]
NAME = "plan: old against new in one process"
OLD_PACKAGE = "icareus_bridge_ab_old"
# The last commit whose domain model was pydantic (before the native event model).
DEFAULT_OLD = "d978aaf"
TARGET_RATIO = 2.5


def import_old(ref: str, into: Path) -> ModuleType:
    """The package `icareus_bridge` of commit `ref`, importable as OLD_PACKAGE."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src/icareus_bridge"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    src = into / "src" / "icareus_bridge"
    word = re.compile(r"\bicareus_bridge\b")
    for path in src.rglob("*.py"):
        path.write_text(word.sub(OLD_PACKAGE, path.read_text()))
    src.rename(into / "src" / OLD_PACKAGE)
    # The old codec finds the schemas where a checkout has them (two levels above the
    # package): the same files as this checkout's, so both fingerprints agree.
    (into / "schemas").symlink_to(ROOT / "schemas")
    sys.path.insert(0, str(into / "src"))
    return importlib.import_module(OLD_PACKAGE)


def stepper(codec: Any, plan_fn: Any, provider: Any) -> Callable[[list[bytes]], float]:
    """A run over the blobs with one version's codec and plan: CPU seconds it took."""

    def run(blobs: list[bytes]) -> float:
        states: dict[str, Any] = {}
        decode, get = codec.decode_event, states.get
        cpu = time.process_time()
        for data in blobs:
            event = decode(data)
            sid = event.subscription.id
            states[sid] = plan_fn(get(sid), event, provider).state
        return time.process_time() - cpu

    return run


def interleaved(
    runs: dict[str, Callable[[list[bytes]], float]], blobs: list[bytes], count: int, mode: str
) -> dict[str, list[float]]:
    """Events per CPU second of each version, `count` runs each, alternating which goes first;
    `mode` "tuned" is the service's collector setting (gc.freeze, TUNED_GC_THRESHOLD)."""
    default_threshold = gc.get_threshold()
    if mode == "tuned":
        gc.collect()
        gc.freeze()
        gc.set_threshold(*plan_bench.TUNED_GC_THRESHOLD)
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    try:
        for k in range(count):
            for name in ("old", "new") if k % 2 == 0 else ("new", "old"):
                gc.collect()
                cpu[name].append(len(blobs) / runs[name](blobs))
    finally:
        gc.set_threshold(*default_threshold)
        gc.unfreeze()
    return cpu


def decisions(codec: Any, plan_fn: Any, provider: Any, blobs: list[bytes]) -> list[Any]:
    """Every decision on the stream in JSON types (state, requests, rejections, skipped)."""
    out: list[Any] = []
    states: dict[str, Any] = {}
    for data in blobs:
        event = codec.decode_event(data)
        sid = event.subscription.id
        d = plan_fn(states.get(sid), event, provider)
        states[sid] = d.state
        out.append(d.model_dump(mode="json"))
    return out


def record(line: str) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    lines = path.read_text().splitlines()
    mine = [i for i, ln in enumerate(lines) if ln.startswith(f"| {NAME} |")]
    if mine:
        lines[mine[0]] = line
    else:
        first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
        end = first
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines.insert(end, line)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=DEFAULT_OLD, help="the commit to compare against")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=6, help="runs of each version")
    parser.add_argument("--no-record", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = parser.parse_args()
    if args.runs < 1 or args.events < 10:
        parser.error("--runs must be at least 1 and --events at least 10")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory(prefix="plan-ab-") as tmp:
        old = import_old(args.old, Path(tmp))
        old_codec = importlib.import_module(f"{OLD_PACKAGE}.codec").Codec()
        old_plan = importlib.import_module(f"{OLD_PACKAGE}.core.plan").plan
        # One configuration file for both (the package's copy is a link into the checkout).
        config = default_config_path()
        old_config = importlib.import_module(f"{OLD_PACKAGE}.config")
        old_provider = old_config.load_settings(config).provider
        provider = load_settings(config).provider
        codec = Codec()
        blobs = [codec.encode_event(e) for e in plan_bench.generate(args.events, provider)]
        print(f"{len(blobs)} events; old = {args.old} ({old.__name__}), new = this checkout")
        same = decisions(old_codec, old_plan, old_provider, blobs) == decisions(
            codec, plan, provider, blobs
        )
        print(f"decisions identical on all {len(blobs)} events: {same}")
        if not same:
            print("the two versions decide differently: no comparison", file=sys.stderr)
            return 1
        runs = {
            "old": stepper(old_codec, old_plan, old_provider),
            "new": stepper(codec, plan, provider),
        }
        for name in ("old", "new"):  # warm-up
            runs[name](blobs[: len(blobs) // 10])
        figures = {mode: interleaved(runs, blobs, args.runs, mode) for mode in ("default", "tuned")}
    parts = []
    for mode, cpu in figures.items():
        old_median, new_median = statistics.median(cpu["old"]), statistics.median(cpu["new"])
        ratio = new_median / old_median
        print(f"{mode} collector:")
        for name in ("old", "new"):
            runs_text = ", ".join(f"{r:,.0f}" for r in cpu[name])
            print(f"  {name} {statistics.median(cpu[name]):,.0f} events/CPU-s (runs {runs_text})")
        print(f"  new/old {ratio:.2f} (target ≥ {TARGET_RATIO})")
        parts.append((mode, old_median, new_median, ratio))
    print(f"load {os.getloadavg()[0]:.1f}")
    if not args.no_record:
        command = (
            f"python bench/plan_ab.py --old {args.old} --events {args.events} --runs {args.runs}"
        )
        default, tuned = parts
        record(
            f"| {NAME} | `{command}` | {machine_info.describe('1 core pinned')} | "
            f"new/old {default[3]:.2f} | ≥ {TARGET_RATIO}× | {default[3] / TARGET_RATIO:.2f}× "
            f"target; medians of {args.runs} interleaved runs each, old = {args.old} (pydantic "
            f"models): Python's default collector old {default[1]:,.0f}, new {default[2]:,.0f} "
            f"events per CPU second; the service's tuned collector old {tuned[1]:,.0f}, new "
            f"{tuned[2]:,.0f} (new/old {tuned[3]:.2f}); decisions identical on all "
            f"{len(blobs)} events ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
            f"{os.getloadavg()[0]:.1f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
