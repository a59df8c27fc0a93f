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
from collections.abc import Iterator
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
    caught_up,
    drill_config,
    outcome,
    scaled,
    start_simulator,
    stop_all,
    wait_for,
    write_figures,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1500)]

SIZES: dict[str, dict[str, Any]] = {
    "short": {"subscriptions": 300, "rate": 40.0, "stop": 8.0, "freeze": 8.0, "demo_subs": 30},
    "full": {"subscriptions": 2000, "rate": 60.0, "stop": 30.0, "freeze": 30.0, "demo_subs": 200},
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[local_kafka.LocalKafka]:
    """A broker this drill may stop and freeze; stopped by pid at the end, thawed first."""
    kafka = local_kafka.LocalKafka(tmp_path / "kafka")
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
    Returns (stopped at, ready again at) as monotonic times."""
    port = kafka.port
    kafka.stop()
    stopped = time.monotonic()
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


def test_broker_stopped_and_frozen_mid_stream_bridge_recovers_by_itself_nothing_lost(
    broker: local_kafka.LocalKafka, drill_size: str, tmp_path: Path
) -> None:
    size = SIZES[drill_size]
    bootstrap = broker.bootstrap_servers
    cfg = drill_config(bootstrap, "http://127.0.0.1:1/api")
    (tmp_path / "simulator.yaml").write_text(yaml.safe_dump(cfg))
    sim = start_simulator(tmp_path / "simulator.yaml", latency_ms=5, jitter_ms=5)
    bridges = []
    watchers: list[Any] = []
    stream = None
    try:
        admin = SimulatorAdmin(sim.admin_url)
        cfg["icareus"]["base_url"] = sim.base_url
        bridges = scaled(cfg, 1, tmp_path)
        bridge = bridges[0]
        bridge.start().wait_ready(timeout=180)
        ready = ReadyWatch(bridge)
        results = ResultWatch(bootstrap, cfg["topics"]["results"])
        watchers = [ready, results]
        for w in watchers:
            w.start()
        workload = Workload(size["subscriptions"])
        stream = Stream(bootstrap, cfg["topics"]["input"], workload, size["rate"], None)
        started = time.monotonic()
        stream.start()

        wait_for(lambda: results.count >= 100, "results flowing")
        stopped, back = restart(broker, size["stop"])
        wait_for(lambda: results.first_any_after(back) is not None, "results after restart")
        first = results.first_any_after(back) or back
        wait_for(lambda: (ready.true_again_after(back) or 0) > 0, "/readyz true after restart")
        assert ready.went_false_between(stopped, time.monotonic()), ready.changes
        ready_again = (ready.true_again_after(back) or back) - back

        counted = results.count
        wait_for(lambda: results.count >= counted + 100, "results flowing before the freeze")
        frozen, thawed = freeze(broker, size["freeze"])
        wait_for(lambda: results.first_any_after(thawed) is not None, "results after the thaw")
        first_thawed = results.first_any_after(thawed) or thawed
        counted = results.count
        wait_for(lambda: results.count >= counted + 100, "results flowing after the freeze")
        freeze_not_ready = ready.went_false_between(frozen, time.monotonic())
        wait_for(lambda: ready.changes[-1][1] is True, "/readyz true after the freeze")

        stream.finish()
        wait_for(lambda: caught_up(bootstrap, cfg), "the bridge to finish", interval=1.0)
        duration = time.monotonic() - started
        result = outcome(bootstrap, cfg, workload, admin, stream.published, {})
        result.check()

        # tools/demo.py through one more stop of the broker.
        demo_rc, demo_tail, demo_outage = run_demo_through_restart(
            broker, bridge.config_path, sim.admin_url, size
        )
        assert demo_rc == 0, demo_tail
        assert "PASSED" in demo_tail and "Traceback" not in demo_tail, demo_tail

        figures = base_figures(result, duration)
        figures.update(
            {
                "stop_seconds": size["stop"],
                "freeze_seconds": size["freeze"],
                "stop_results_resumed_after_back_seconds": round(first - back, 1),
                "stop_ready_again_after_back_seconds": round(ready_again, 1),
                "stop_broker_restart_seconds": round(back - stopped - size["stop"], 1),
                "freeze_results_resumed_after_thaw_seconds": round(first_thawed - thawed, 1),
                "freeze_readyz_went_false": freeze_not_ready,
                "time_to_recover_seconds": round(max(first - back, first_thawed - thawed), 1),
                "demo_exit": demo_rc,
                "demo_broker_down_seconds": round(demo_outage, 1),
            }
        )
        write_figures("broker", drill_size, figures)
        print(figures)
        admin.close()
    finally:
        stop_all(bridges)
        sim.stop()
        if stream is not None:
            stream.stop()
        for w in watchers:
            w.stop()


def run_demo_through_restart(
    kafka: local_kafka.LocalKafka, config: Path, admin_url: str, size: dict[str, Any]
) -> tuple[int, str, float]:
    """Runs tools/demo.py; stops the broker once its main phase is published, for the drill's
    stop length. Returns (exit code, output tail, seconds the broker was down)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "demo.py"),
            "--config",
            str(config),
            "--bootstrap",
            kafka.bootstrap_servers,
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
            if line.startswith("phase become subscriber"):
                phase.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    down = 0.0
    try:
        assert phase.wait(300), "".join(lines[-30:])
        stopped, back = restart(kafka, size["stop"])
        down = back - stopped
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    return proc.returncode, "".join(lines[-40:]), down
