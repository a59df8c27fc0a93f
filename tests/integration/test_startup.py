"""Start-up without a broker: `run` says at once what it waits for (with the address), serves
/healthz (alive) and /readyz (not ready, and why) while it waits, becomes ready when the broker
answers, and gives up with exit 4 after `kafka.startup_wait_seconds`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import BRIDGE, bridge_config, free_port

pytestmark = pytest.mark.kafka

EXIT_STARTUP = 4


class RunProcess:
    """`icareus-bridge run --role planner` with a config file, its output in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.path = workdir / "bridge.yaml"
        self.path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = workdir / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BRIDGE), "run", "--role", "planner", "--config", str(self.path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.config['http']['port']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (OSError, ValueError):
                pass
            assert self.proc.poll() is None, f"exited {self.proc.returncode}\n{self.text()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def run_process(config: dict[str, Any], workdir: Path) -> Iterator[RunProcess]:
    process = RunProcess(config, workdir)
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def forwarder(listen_port: int, target: str) -> Iterator[None]:
    """From now on, a TCP port that forwards to `target` (host:port): the broker "appears" at
    the bootstrap address (it advertises its own address for everything after bootstrap)."""
    host, port = target.rsplit(":", 1)
    server = socket.create_server(("127.0.0.1", listen_port))
    server.settimeout(0.2)
    done = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not done.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        server.close()
        thread.join(5)


def config_for(bootstrap: str, wait_seconds: float) -> dict[str, Any]:
    config = bridge_config(bootstrap, "http://127.0.0.1:1/api")
    config["kafka"]["startup_wait_seconds"] = wait_seconds
    return config


def says_it_waits_for(process: RunProcess, address: str) -> bool:
    return any(
        line.get("event") == "waiting for the Kafka broker"
        and line.get("bootstrap_servers") == address
        for line in process.lines()
    )


def test_run_without_a_broker_says_what_it_waits_for_serves_health_and_exits_4_after_the_limit(
    tmp_path: Path,
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with run_process(config_for(address, wait_seconds=6), tmp_path) as process:
        process.wait_for(lambda: says_it_waits_for(process, address), 20, "the waiting line")
        status, body = process.get("/healthz")
        assert status == 200 and body["status"] == "alive"
        status, body = process.get("/readyz")
        assert status == 503
        assert body["checks"]["startup"] == {
            "ready": False,
            "detail": f"waiting for the Kafka broker at {address}",
        }
        assert process.proc.wait(60) == EXIT_STARTUP, process.text()
        text = process.text()
        assert f"kafka.bootstrap_servers={address}" in text
        assert "kafka.startup_wait_seconds" in text


def test_run_waiting_for_a_broker_becomes_ready_when_it_answers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = config_for(address, wait_seconds=0)  # wait for ever
    config["planner"]["group_id"] = f"startup-{uuid.uuid4().hex[:8]}"
    with run_process(config, tmp_path) as process:
        process.wait_for(lambda: says_it_waits_for(process, address), 20, "the waiting line")
        assert process.get("/readyz")[0] == 503
        with forwarder(port, kafka_bootstrap):
            process.wait_for(lambda: process.get("/readyz")[0] == 200, 90, "/readyz 200")
        _status, body = process.get("/readyz")
        assert body["checks"]["startup"]["ready"] is True
        assert body["checks"]["planner"]["ready"] is True
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(30) == 0, process.text()
