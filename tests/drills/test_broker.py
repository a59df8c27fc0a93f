"""Broker drill, on a broker of its own: while CRM streams events, the Kafka JVM is stopped and
started again on the same data directory and port, then frozen (SIGSTOP) and thawed (SIGCONT).
The bridge recovers by itself (`/readyz` false while no broker answers, true again after), and
nothing is lost or repeated. Then `tools/demo.py` runs its story through another stop of the
broker and still ends with exit 0 and the simulator's state equal to CRM's snapshots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import local_kafka
import pytest
import yaml

from icareus_bridge.icareus.simulator import SimulatorAdmin
from tests.drills.support import (
    REPO_ROOT,
    ReadyWatch,
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

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]

SIZES: dict[str, dict[str, Any]] = {
    "short": {
        "subscriptions": 300,
        "rate": 40.0,
        "stop": 8.0,
        "freeze": 8.0,
        "demo_subs": 15,
        "demo_freeze": 12.0,
    },
    "full": {
        "subscriptions": 2000,
        "rate": 60.0,
        "stop": 30.0,
        "freeze": 30.0,
        "demo_subs": 200,
        "demo_freeze": 30.0,
    },
}


# Liveness, not speed: a bridge that has not delivered again this long after the broker is
# back has not recovered by itself. Above the watchdog's deadline for a stalled transactional
# call (its 30 s timeout + 5 s, kafka/checkpoint.py) plus a producer's replacement, in both
# sizes: a call that stalls when the broker goes away is only replaced after that deadline.
RECOVERY_BOUND_SECONDS = {"short": 120.0, "full": 180.0}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_kafka.LocalKafka]:
    """A broker these drills may stop and freeze; stopped by pid at the end, thawed first."""
    kafka = local_kafka.LocalKafka(tmp_path_factory.mktemp("kafka"))
    kafka.start()
    try:
        kafka.wait_ready()
        yield kafka
    finally:
        if kafka.process is not None and kafka.process.poll() is None:
            os.kill(kafka.process.pid, signal.SIGCONT)
        kafka.stop()


def restart(kafka: local_kafka.LocalKafka, down_seconds: float) -> tuple[float, float]:
    """Stop the JVM, keep it down `down_seconds`, start it on the same data dir and port.
    Returns (stopping began at, ready again at) as monotonic times: the bridge may see the
    broker go while the JVM is still shutting down."""
    port = kafka.port
    stopped = time.monotonic()
    kafka.stop()
    time.sleep(down_seconds)  # the outage itself, not a wait for a condition
    kafka.start()
    kafka.wait_ready()
    assert kafka.port == port
    return stopped, time.monotonic()


def freeze(kafka: local_kafka.LocalKafka, seconds: float) -> tuple[float, float]:
    assert kafka.process is not None
    os.kill(kafka.process.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        time.sleep(seconds)  # the fault itself
    finally:
        os.kill(kafka.process.pid, signal.SIGCONT)
    return frozen, time.monotonic()


class Stack:
    """The simulator, one bridge on the drill's broker, CRM's stream and the watchers."""

    def __init__(
        self, kafka: local_kafka.LocalKafka, size: dict[str, Any], workdir: Path, bound: float
    ) -> None:
        self.bound = bound
        self.bootstrap = kafka.bootstrap_servers
        self.cfg = drill_config(self.bootstrap, "http://127.0.0.1:1/api")
        (workdir / "simulator.yaml").write_text(yaml.safe_dump(self.cfg))
        self.sim = start_simulator(workdir / "simulator.yaml", latency_ms=5, jitter_ms=5)
        self.bridges: list[Any] = []
        self.watchers: list[Any] = []
        self.stream: Stream | None = None
        self.admin = SimulatorAdmin(self.sim.admin_url)
        self.cfg["icareus"]["base_url"] = self.sim.base_url
        self.bridges = scaled(self.cfg, 1, workdir)
        self.bridge = self.bridges[0]
        self.bridge.start().wait_ready(timeout=180)
        self.ready = ReadyWatch(self.bridge)
        self.results = ResultWatch(self.bootstrap, self.cfg["topics"]["results"])
        self.watchers = [self.ready, self.results]
        for w in self.watchers:
            w.start()
        self.workload = Workload(size["subscriptions"])
        self.stream = Stream(
            self.bootstrap, self.cfg["topics"]["input"], self.workload, size["rate"], None
        )
        self.started = time.monotonic()
        self.stream.start()

    def flowing(self, more: int = 100) -> None:
        counted = self.results.count
        wait_for(
            lambda: self.results.count >= counted + more,
            "results flowing",
            timeout=self.bound,
        )

    def resumed_after(self, at: float) -> float:
        """Seconds from `at` to the first result committed after it."""
        wait_for(
            lambda: self.results.first_any_after(at) is not None,
            "results again: the bridge did not recover by itself",
            timeout=self.bound,
        )
        return (self.results.first_any_after(at) or at) - at

    def finish(self) -> tuple[Any, float]:
        assert self.stream is not None
        self.stream.finish()
        wait_for(
            lambda: settled(self.bootstrap, self.cfg, self.workload),
            "the bridge to finish",
            interval=2.0,
        )
        duration = time.monotonic() - self.started
        result = outcome(
            self.bootstrap, self.cfg, self.workload, self.admin, self.stream.published, {}
        )
        result.check()
        return result, duration

    def close(self) -> None:
        stop_all(self.bridges)
        self.sim.stop()
        if self.stream is not None:
            self.stream.stop()
        for w in self.watchers:
            w.stop()
        self.admin.close()


@pytest.fixture
def stack(broker: local_kafka.LocalKafka, drill_size: str, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(broker, SIZES[drill_size], tmp_path, RECOVERY_BOUND_SECONDS[drill_size])
    try:
        yield running
    finally:
        running.close()


def test_broker_frozen_mid_stream_bridge_recovers_by_itself_nothing_lost(
    broker: local_kafka.LocalKafka, stack: Stack, drill_size: str
) -> None:
    size = SIZES[drill_size]
    stack.flowing()
    frozen, thawed = freeze(broker, size["freeze"])
    resumed = stack.resumed_after(thawed)
    stack.flowing()
    not_ready = stack.ready.went_false_between(frozen, time.monotonic())
    wait_for(lambda: stack.ready.changes[-1][1] is True, "/readyz true after the freeze")
    result, duration = stack.finish()

    # tools/demo.py through a freeze longer than its 10 s Kafka timeouts (it used to die with a
    # traceback there, on its committed-offsets query).
    demo_rc, demo_tail, demo_outage = run_demo_through_fault(
        stack.bootstrap,
        stack.bridge.config_path,
        stack.sim.admin_url,
        size,
        lambda: freeze(broker, size["demo_freeze"]),
    )
    assert demo_rc == 0, demo_tail[-4000:]
    assert "PASSED" in demo_tail and "Traceback" not in demo_tail, demo_tail[-4000:]
    figures = base_figures(result, duration)
    figures.update(
        {
            "freeze_seconds": size["freeze"],
            "freeze_results_resumed_after_thaw_seconds": round(resumed, 1),
            "freeze_readyz_went_false": not_ready,
            "time_to_recover_seconds": round(resumed, 1),
            "demo_exit": demo_rc,
            "demo_frozen_seconds": round(demo_outage, 1),
            "demo_saw_kafka_not_answering": "Kafka not answering" in demo_tail,
        }
    )
    write_figures("broker_freeze", drill_size, figures)
    print(figures)


# After a broker restart librdkafka 2.16 can hang in a transactional call
# (confluentinc/librdkafka#5511); the watchdog in kafka/checkpoint.py replaces the stalled
# producer (docs/RELIABILITY.md, "Known defects"). This drill proves the bridge recovers by itself.
def test_broker_stopped_mid_stream_and_started_on_its_data_bridge_recovers_by_itself(
    broker: local_kafka.LocalKafka, stack: Stack, drill_size: str
) -> None:
    size = SIZES[drill_size]
    stack.flowing()
    stopped, back = restart(broker, size["stop"])
    resumed = stack.resumed_after(back)
    wait_for(
        lambda: (stack.ready.true_again_after(back) or 0) > 0, "/readyz true after the restart"
    )
    assert stack.ready.went_false_between(stopped, time.monotonic()), stack.ready.changes
    ready_again = (stack.ready.true_again_after(back) or back) - back
    stack.flowing()
    result, duration = stack.finish()

    figures = base_figures(result, duration)
    figures.update(
        {
            "stop_seconds": size["stop"],
            "stop_results_resumed_after_back_seconds": round(resumed, 1),
            "stop_ready_again_after_back_seconds": round(ready_again, 1),
            "stop_broker_restart_seconds": round(back - stopped - size["stop"], 1),
            "time_to_recover_seconds": round(resumed, 1),
        }
    )
    write_figures("broker_stop", drill_size, figures)
    print(figures)


def run_demo_through_fault(
    bootstrap: str,
    config: Path,
    admin_url: str,
    size: dict[str, Any],
    fault: Callable[[], tuple[float, float]],
) -> tuple[int, str, float]:
    """Runs tools/demo.py; once its main phase is published and it waits for the bridge,
    `fault()` (it returns when the fault is over). Returns (exit code, its output, seconds
    the fault lasted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "demo.py"),
            "--config",
            str(config),
            "--bootstrap",
            bootstrap,
            "--admin-url",
            admin_url,
            "--subscriptions",
            str(size["demo_subs"]),
            "--timeout",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []
    phase = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # Its main phase is published and it is polling the planner's committed offsets.
            if line.startswith("  become subscriber: planner"):
                phase.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    lasted = 0.0
    try:
        deadline = time.monotonic() + 300
        while not phase.wait(0.5):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-30:])
        began, ended = fault()
        lasted = ended - began
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    return proc.returncode, "".join(lines), lasted
