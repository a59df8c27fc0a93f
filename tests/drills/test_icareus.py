"""Icareus drills: CRM streams events while the simulator misbehaves through its admin API
(`POST /_sim/faults`): errors switched on and off every few seconds, answers slower than the
bridge's timeout, storms of 429 with Retry-After, and an outage twice as long as the retry
budget. Each ends with every request finished exactly once, Icareus equal to CRM's final
snapshots and no effect applied twice (repeats are answered from the Idempotency-Key); the
outage leaves dead letters and parked subscriptions, which `icareus-bridge replay` brings back
until the same holds."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from tests.drills.support import (
    ResultWatch,
    Stream,
    Workload,
    base_figures,
    drill_config,
    outcome,
    scaled,
    settled,
    start_simulator,
    stop_all,
    wait_for,
    write_figures,
)
from tests.e2e.harness import BRIDGE, Bridge

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]

NO_FAULTS: dict[str, Any] = {"outage": False, "rates": {}, "script": [], "latency_ms": 5}
SIZES: dict[str, dict[str, Any]] = {
    # stream: seconds of faults while CRM publishes at `rate`; period: on/off switching
    "short": {"subscriptions": 150, "rate": 30.0, "stream": 8.0, "period": 2.0,
              "outage": 12.0, "budget": 5.0},
    "full": {"subscriptions": 1500, "rate": 50.0, "stream": 90.0, "period": 3.0,
             "outage": 120.0, "budget": 60.0},
}  # fmt: skip
PATIENT_RETRY = {
    "max_attempts": 1000,
    "max_total_seconds": 120.0,
    "initial_backoff_seconds": 0.1,
    "max_backoff_seconds": 2.0,
    "jitter_seconds": 0.1,
}
TIMEOUTS = {
    "connect_timeout_seconds": 1.0,
    "read_timeout_seconds": 1.0,
    "total_timeout_seconds": 2.0,
}


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    folder = tmp_path_factory.mktemp("icareus-sim")
    cfg = drill_config("unused:9092", "http://127.0.0.1:1/api")
    (folder / "simulator.yaml").write_text(yaml.safe_dump(cfg))
    sim = start_simulator(folder / "simulator.yaml", **NO_FAULTS)
    yield sim
    sim.stop()


@pytest.fixture
def admin(simulator: SimulatorHandle) -> Iterator[SimulatorAdmin]:
    client = SimulatorAdmin(simulator.admin_url)
    client.set_faults(**NO_FAULTS)
    yield client
    client.set_faults(**NO_FAULTS)
    client.close()


def new_bridge(
    kafka_bootstrap: str, simulator: SimulatorHandle, workdir: Path, retry: dict[str, Any]
) -> Bridge:
    cfg = drill_config(kafka_bootstrap, simulator.base_url, retry=retry, **TIMEOUTS)
    bridge = scaled(cfg, 1, workdir)[0]
    bridge.start().wait_ready(timeout=180)
    return bridge


@pytest.fixture(scope="module")
def patient_bridge(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """One bridge for the drills that must end without dead letters: a budget longer than
    any fault lasts."""
    bridge = new_bridge(
        kafka_bootstrap, simulator, tmp_path_factory.mktemp("patient"), PATIENT_RETRY
    )
    yield bridge
    bridge.stop_quietly()


class Switcher(threading.Thread):
    """Switches faults on and off every `period` seconds until stopped (off at the end)."""

    def __init__(self, admin_url: str, on: dict[str, Any], period: float) -> None:
        super().__init__(name="fault-switcher", daemon=True)
        self.admin = SimulatorAdmin(admin_url)
        self.on, self.period = on, period
        self.switches = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.admin.set_faults(**self.on)
                self.switches += 1
                if self._halt.wait(self.period):
                    break
                self.admin.set_faults(**NO_FAULTS)
                self.switches += 1
                self._halt.wait(self.period)
        finally:
            self.admin.set_faults(**NO_FAULTS)
            self.admin.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def retries(bridge: Bridge) -> dict[str, float]:
    """icareus_bridge_retries_total by reason, from the bridge's /metrics."""
    out: dict[str, float] = {}
    for line in bridge.metrics().splitlines():
        if line.startswith("icareus_bridge_retries_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(value)
    return out


def run_faulted_stream(
    name: str,
    bridge: Bridge,
    admin: SimulatorAdmin,
    admin_url: str,
    kafka_bootstrap: str,
    drill_size: str,
    on: dict[str, Any],
    period: float | None,
) -> dict[str, Any]:
    """CRM streams while the faults are on (switched every `period`, or on throughout);
    then the faults stop, the bridge finishes, and the checks run. Returns the figures."""
    size = SIZES[drill_size]
    cfg = bridge.config
    workload = Workload(size["subscriptions"])
    before = admin.stats()
    retries_before = retries(bridge)
    stream = Stream(kafka_bootstrap, cfg["topics"]["input"], workload, size["rate"], None)
    switcher = Switcher(admin_url, on, period or 1e9)
    started = time.monotonic()
    try:
        switcher.start()
        stream.start()
        time.sleep(size["stream"])  # the length of the fault, not a wait for a condition
    finally:
        switcher.stop()
        stream.stop()
    faults_off = time.monotonic()
    stream.finish()
    wait_for(lambda: settled(kafka_bootstrap, cfg, workload), "the bridge to finish", interval=2.0)
    recovered = time.monotonic() - faults_off
    result = outcome(kafka_bootstrap, cfg, workload, admin, stream.published, before)
    result.check()
    figures = base_figures(result, time.monotonic() - started)
    after = retries(bridge)
    figures.update(
        {
            "fault": on,
            "switch_period_seconds": period,
            "switches": switcher.switches,
            "fault_seconds": size["stream"],
            "retries": {k: int(v - retries_before.get(k, 0.0)) for k, v in after.items()
                        if v - retries_before.get(k, 0.0) > 0},
            "time_to_recover_seconds": round(recovered, 1),
        }
    )  # fmt: skip
    write_figures(name, drill_size, figures)
    print(figures)
    return figures


def test_flapping_icareus_errors_on_and_off_every_few_seconds(
    patient_bridge: Bridge, admin: SimulatorAdmin, kafka_bootstrap: str, drill_size: str,
    simulator: SimulatorHandle,
) -> None:  # fmt: skip
    on = {"rates": {"*": {"http_503": 0.5, "http_500": 0.1, "drop": 0.1, "drop_after": 0.1}}}
    figures = run_faulted_stream(
        "icareus_flapping", patient_bridge, admin, simulator.admin_url, kafka_bootstrap,
        drill_size, on, SIZES[drill_size]["period"],
    )  # fmt: skip
    assert figures["errors_injected"] > 0


def test_answers_slower_than_the_timeout(
    patient_bridge: Bridge, admin: SimulatorAdmin, kafka_bootstrap: str, drill_size: str,
    simulator: SimulatorHandle,
) -> None:  # fmt: skip
    # `slow` applies the call and answers after slow_ms: the bridge has given up by then, so
    # its retry must be answered from the Idempotency-Key, not applied again.
    on = {"rates": {"*": {"slow": 0.25}}, "slow_ms": 3000}
    figures = run_faulted_stream(
        "icareus_slow", patient_bridge, admin, simulator.admin_url, kafka_bootstrap,
        drill_size, on, None,
    )  # fmt: skip
    assert figures["duplicates_suppressed"] > 0, "no late answer was retried"


def test_429_storms_with_retry_after(
    patient_bridge: Bridge, admin: SimulatorAdmin, kafka_bootstrap: str, drill_size: str,
    simulator: SimulatorHandle,
) -> None:  # fmt: skip
    on = {"rates": {"*": {"http_429": 0.9}}, "retry_after_seconds": 1}
    figures = run_faulted_stream(
        "icareus_429", patient_bridge, admin, simulator.admin_url, kafka_bootstrap,
        drill_size, on, SIZES[drill_size]["period"],
    )  # fmt: skip
    assert figures["retries"].get("throttled", 0) > 0, figures["retries"]


def replay(bridge: Bridge) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    return subprocess.run(
        [str(BRIDGE), "replay", "--config", str(bridge.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_outage_longer_than_the_retry_budget_dead_letters_parks_then_replay_converges(
    kafka_bootstrap: str, simulator: SimulatorHandle, admin: SimulatorAdmin, drill_size: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    size = SIZES[drill_size]
    retry = {
        "max_attempts": 1000,
        "max_total_seconds": size["budget"],
        "initial_backoff_seconds": 0.2,
        "max_backoff_seconds": 2.0,
        "jitter_seconds": 0.1,
    }
    bridge = new_bridge(kafka_bootstrap, simulator, tmp_path, retry)
    watch = None
    try:
        cfg = bridge.config
        workload = Workload(size["subscriptions"])
        before = admin.stats()
        watch = ResultWatch(kafka_bootstrap, cfg["topics"]["results"])
        watch.start()
        stream = Stream(kafka_bootstrap, cfg["topics"]["input"], workload, size["rate"], None)
        started = time.monotonic()
        stream.start()
        try:
            wait_for(lambda: watch is not None and watch.count >= 50, "results before the outage")
            admin.set_faults(outage=True)
            outage_started = time.monotonic()
            time.sleep(size["outage"])  # the outage itself
            admin.set_faults(outage=False)
            outage_ended = time.monotonic()
            # CRM goes on after the outage: parked subscriptions' new requests are parked too.
            time.sleep(size["period"] * 2)
        finally:
            admin.set_faults(**NO_FAULTS)
            stream.stop()
        stream.finish()
        wait_for(
            lambda: settled(kafka_bootstrap, cfg, workload), "the bridge to finish", interval=2.0
        )
        parked = outcome(kafka_bootstrap, cfg, workload, admin, stream.published, before)
        assert parked.dlq_reasons.get("RETRIES_EXHAUSTED", 0) > 0, parked.dlq_reasons
        assert parked.missing_results > 0
        dead_letters, reasons = parked.dead_letters, dict(parked.dlq_reasons)

        replay_started = time.monotonic()
        done = replay(bridge)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        wait_for(
            lambda: settled(kafka_bootstrap, cfg, workload, dead_letters_finish=False),
            "the replayed requests",
            interval=2.0,
        )
        converged = time.monotonic() - replay_started
        result = outcome(kafka_bootstrap, cfg, workload, admin, stream.published, before)
        result.check(dead_letters_expected=True)
        assert result.replayed == dead_letters
        figures = base_figures(result, time.monotonic() - started)
        figures.update(
            {
                "outage_seconds": round(outage_ended - outage_started, 1),
                "retry_budget_seconds": size["budget"],
                "dead_letters": dead_letters,
                "dlq_reasons": reasons,
                "replay_converged_seconds": round(converged, 1),
                "time_to_recover_seconds": round(time.monotonic() - outage_ended, 1),
            }
        )
        write_figures("icareus_outage", drill_size, figures)
        print(figures)
    finally:
        stop_all([bridge])
        if watch is not None:
            watch.stop()
