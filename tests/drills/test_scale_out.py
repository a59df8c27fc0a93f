"""Scale-out drill: three `icareus-bridge run` processes share 6 partitions while CRM streams
events. One is killed with SIGKILL mid-stream and started again (same instance ids: it takes its
partitions back and fences its own open transactions); then the process holding the most
partitions is killed for good, and the other two take its partitions over.

Proves: every request has exactly one result, no account is registered twice, Icareus ends as
CRM's final snapshots say, and no effect is applied twice. Records the stall CRM's read_committed
consumers see on the dead process's partitions: the session timeout of the static member, then
its open transaction, which blocks those partitions until the broker aborts it at
`transaction.timeout.ms`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from icareus_bridge.icareus.simulator import SimulatorAdmin
from tests.drills.support import (
    ResultWatch,
    Stream,
    Workload,
    base_figures,
    drill_config,
    group_assignment,
    kill,
    outcome,
    scaled,
    settled,
    start_simulator,
    stop_all,
    wait_for,
    write_figures,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]

# subscriptions x events each; CRM's publishing rate (events/s)
SIZES: dict[str, dict[str, Any]] = {
    "short": {"subscriptions": 300, "events_each": 5, "rate": 150.0, "txn_timeout_ms": 15000},
    "full": {"subscriptions": 4000, "events_each": 5, "rate": 400.0, "txn_timeout_ms": None},
}


def owned(bootstrap: str, cfg: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(planner partitions, dispatcher partitions) of the process with config `cfg`."""
    p, d = cfg["planner"], cfg["dispatcher"]
    planner = group_assignment(bootstrap, p["group_id"]).get(f"planner-{p['instance_id']}")
    dispatcher = group_assignment(bootstrap, d["group_id"]).get(f"dispatcher-{d['instance_id']}")
    return planner or set(), dispatcher or set()


def test_scale_out_kill_9_one_of_three_then_the_busiest_loses_and_repeats_nothing(
    kafka_bootstrap: str, drill_size: str, tmp_path: Path
) -> None:
    size = SIZES[drill_size]
    cfg = drill_config(kafka_bootstrap, "http://127.0.0.1:1/api")
    if size["txn_timeout_ms"]:
        cfg["kafka"]["extra"] = {"transaction.timeout.ms": str(size["txn_timeout_ms"])}
    sim_config = tmp_path / "simulator.yaml"
    sim_config.write_text(yaml.safe_dump(cfg))
    sim = start_simulator(sim_config, latency_ms=5, jitter_ms=5)
    bridges = []
    watch = stream = None
    try:
        admin = SimulatorAdmin(sim.admin_url)
        cfg["icareus"]["base_url"] = sim.base_url
        bridges = scaled(cfg, 3, tmp_path)
        for b in bridges:
            b.start()
        for b in bridges:
            b.wait_ready(timeout=180)
        workload = Workload(size["subscriptions"])
        total = size["subscriptions"] * size["events_each"]
        watch = ResultWatch(kafka_bootstrap, cfg["topics"]["results"])
        watch.start()
        stream = Stream(
            kafka_bootstrap, cfg["topics"]["input"], workload, size["rate"], total, int(total * 0.6)
        )
        started = time.monotonic()
        stream.start()

        # 1. SIGKILL one process mid-stream, start it again.
        wait_for(lambda: stream.published >= total * 0.2, "a fifth of the events")
        first = bridges[1]
        first_parts = owned(kafka_bootstrap, first.config)[1]
        killed_1 = time.monotonic()
        kill(first)
        first.start()
        first.wait_ready(timeout=180)
        restarted = time.monotonic() - killed_1

        # 2. SIGKILL the process holding the most partitions, for good, with 40 % of the events
        #    still to come (CRM holds them back until then).
        wait_for(stream.held, "60 % of the events")
        holdings = {i: owned(kafka_bootstrap, b.config) for i, b in enumerate(bridges)}
        busiest = max(holdings, key=lambda i: len(holdings[i][0]) + len(holdings[i][1]))
        victim = bridges[busiest]
        victim_parts = holdings[busiest][1]
        victim_instance = victim.config["dispatcher"]["instance_id"]
        killed_2 = time.monotonic()
        kill(victim)
        stream.release()
        wait_for(
            lambda: (
                f"dispatcher-{victim_instance}"
                not in group_assignment(kafka_bootstrap, cfg["dispatcher"]["group_id"])
            ),
            "the dead process to leave the dispatcher group",
            interval=0.5,
        )
        reassigned = time.monotonic() - killed_2

        stream.finish(timeout=total / size["rate"] + 120)
        wait_for(
            lambda: settled(kafka_bootstrap, cfg, workload), "the bridge to finish", interval=2.0
        )
        duration = time.monotonic() - started

        def resumed(parts: set[int], at: float) -> float:
            times = [watch.first_after(p, at) for p in parts]
            arrivals = watch.arrivals
            assert all(t is not None for t in times), (
                f"partitions {sorted(parts)} after {at - started:.1f} s: resumed {times}; "
                f"last arrivals { {p: round(max(v) - started, 1) for p, v in arrivals.items()} }"
            )
            return max(t for t in times if t is not None) - at

        stall_1 = resumed(first_parts, killed_1) if first_parts else 0.0
        stall_2 = resumed(victim_parts, killed_2) if victim_parts else 0.0

        result = outcome(kafka_bootstrap, cfg, workload, admin, stream.published, {})
        result.check()
        figures = base_figures(result, duration)
        figures.update(
            {
                "processes": 3,
                "partitions": 6,
                "first_kill_restart_seconds": round(restarted, 1),
                "first_kill_stall_seconds": round(stall_1, 1),
                "busiest_partitions": [sorted(holdings[busiest][0]), sorted(victim_parts)],
                "second_kill_reassigned_seconds": round(reassigned, 1),
                "second_kill_stall_seconds": round(stall_2, 1),
                "time_to_recover_seconds": round(max(stall_1, stall_2), 1),
                "transaction_timeout_ms": size["txn_timeout_ms"] or 60000,
            }
        )
        write_figures("scale_out", drill_size, figures)
        print(figures)
        admin.close()
    finally:
        stop_all(bridges)
        sim.stop()
        if stream is not None:
            stream.stop()
        if watch is not None:
            watch.stop()
