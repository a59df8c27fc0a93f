"""`make run`: the whole bridge on this machine — a Kafka broker, the Icareus simulator and
`icareus-bridge run` — started in that order, stopped in the reverse order on Ctrl-C/SIGTERM.

The broker of `make kafka-up` is reused when it is up; otherwise a fresh one is started in
`var/run-local/kafka/` from `tools/kafka/local_kafka.py`. Where everything listens is printed
and written to `var/run-local/stack.json` (what `make demo` reads). Children run in their own
process groups, so a terminal's Ctrl-C reaches only this script, which then stops the bridge
first (it finishes its open transactions), the simulator next and the broker last; each child
also gets a signal from the kernel should this script die without cleaning up.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
sys.path.insert(0, str(TOOLS_DIR / "kafka"))

import local_kafka  # noqa: E402  (tools/kafka, put on sys.path just above)

RUN_DIR = REPO_ROOT / "var" / "run-local"
STACK_FILE = RUN_DIR / "stack.json"
DEFAULT_CONFIG = REPO_ROOT / "config" / "bridge.yaml"
SIMULATOR_READY_PREFIX = "icareus simulator listening on "  # icareus.simulator.READY_PREFIX
READY_TIMEOUT_SECONDS = 180.0
SIMULATOR_STOP_SECONDS = 10.0
BRIDGE_EXTRA_STOP_SECONDS = 15.0  # on top of dispatcher.shutdown_grace_seconds
PR_SET_PDEATHSIG = 1


class RunError(RuntimeError):
    """Something of the stack could not start; the message says what and where to look."""


def _child_setup(death_signal: int) -> None:
    # Between fork and exec: a process group of its own (the terminal's Ctrl-C is ours to pass
    # on, in order) and a signal from the kernel if this script dies without stopping it.
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)


class GroupedBroker(local_kafka.LocalKafka):
    """`LocalKafka` whose JVM runs in its own process group and dies with this script."""

    def start(self, detached: bool = False) -> None:
        local_kafka.fetch(self.lib, quiet=True)
        self.format()  # always fresh: the simulator starts empty, so must the bridge's state
        with (self.state_dir / "console.log").open("ab") as console:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.properties_file)),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _child_setup(signal.SIGKILL),
            )
        self._started_at = time.monotonic()


@dataclass
class Child:
    """One child process (simulator or bridge) with its log file."""

    name: str
    process: subprocess.Popen[str]
    log_path: Path
    log: IO[str] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- tail of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop in {timeout:.0f} s: killing it", flush=True)
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None
        return self.process.returncode


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == "https" else 80


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def _pick_port(wanted: int, what: str) -> int:
    if local_kafka.port_is_free(wanted):
        return wanted
    port = local_kafka.free_port()
    print(f"  port {wanted} ({what}) is taken; using {port} instead", flush=True)
    return port


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


class Stack:
    """The three parts, started in order and stopped in reverse; `stop()` is idempotent."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config: Path = args.config.resolve()
        self.broker: GroupedBroker | None = None
        self.bootstrap = ""
        self.broker_note = ""
        self.simulator: Child | None = None
        self.bridge: Child | None = None
        self.info: dict[str, Any] = {}
        self._stopped = False

    # -- start ------------------------------------------------------------------------------

    def start_broker(self) -> None:
        if self.args.bootstrap:
            self.bootstrap = self.args.bootstrap
            self.broker_note = "given with --bootstrap"
            return
        pid = local_kafka._running_pid()
        ports = local_kafka._recorded_ports()
        if pid is not None and ports is not None and not self.args.own_broker:
            self.bootstrap = f"127.0.0.1:{ports[0]}"
            self.broker_note = f"reused from `make kafka-up` (pid {pid}); left running"
            return
        port = local_kafka.DEFAULT_PORT
        if not local_kafka.port_is_free(port):
            port = local_kafka.free_port()
        broker = GroupedBroker(RUN_DIR / "kafka", port=port)
        self.broker = broker
        print(f"starting Kafka broker on 127.0.0.1:{port} ...", flush=True)
        broker.start()
        seconds = broker.wait_ready()
        self.bootstrap = broker.bootstrap_servers
        assert broker.process is not None
        self.broker_note = f"started (pid {broker.process.pid}, ready in {seconds:.1f} s)"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        log_path = RUN_DIR / f"{name}.log"
        log = log_path.open("w", encoding="utf-8")
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if name == "simulator" else log,
            stderr=log,
            env=env,
            text=True,
            cwd=REPO_ROOT,
            preexec_fn=lambda: _child_setup(signal.SIGTERM),
        )
        return Child(name, process, log_path, log)

    def start_simulator(self, settings: Any) -> str:
        base_url: str = settings.icareus.base_url
        port = _pick_port(_port_of(base_url), "icareus.base_url")
        cmd = [
            sys.executable,
            "-m",
            "icareus_bridge.cli",
            "simulator",
            "--config",
            str(self.config),
            "--host",
            urlsplit(base_url).hostname or "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            str(self.args.sim_latency_ms),
        ]
        print(f"starting Icareus simulator on port {port} ...", flush=True)
        child = self._spawn("simulator", cmd, dict(os.environ))
        self.simulator = child
        assert child.process.stdout is not None
        line = _read_line(child.process.stdout, 30.0)
        if not line.startswith(SIMULATOR_READY_PREFIX):
            raise RunError(f"the simulator did not start: {line.strip()!r}\n{child.log_tail()}")
        # Keep draining its stdout into the log so it can never block on a full pipe.
        threading.Thread(
            target=_drain, args=(child.process.stdout, child.log_path), daemon=True
        ).start()
        root = line[len(SIMULATOR_READY_PREFIX) :].split()[0]
        self.info["simulator_url"] = _with_port(base_url, port)
        self.info["simulator_admin_url"] = root + "/_sim"
        return self.info["simulator_url"]  # type: ignore[no-any-return]

    def start_bridge(self, settings: Any, simulator_url: str) -> None:
        http_port = _pick_port(settings.http.port, "http.port")
        env = dict(os.environ)
        env["ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS"] = self.bootstrap
        env["ICAREUS_BRIDGE__ICAREUS__BASE_URL"] = simulator_url
        env["ICAREUS_BRIDGE__HTTP__PORT"] = str(http_port)
        cmd = [sys.executable, "-m", "icareus_bridge.cli", "run", "--config", str(self.config)]
        print("starting the bridge (icareus-bridge run) ...", flush=True)
        self.bridge = self._spawn("bridge", cmd, env)
        base = f"http://127.0.0.1:{http_port}"
        self.info.update(
            metrics_url=base + "/metrics",
            healthz_url=base + "/healthz",
            readyz_url=base + "/readyz",
        )

    def wait_ready(self, timeout: float) -> float:
        assert self.bridge is not None
        started = time.monotonic()
        deadline = started + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.bridge.alive():
                raise RunError(
                    f"the bridge exited with code {self.bridge.process.returncode} before it "
                    f"was ready\n{self.bridge.log_tail()}"
                )
            try:
                status, body = _http_get(self.info["readyz_url"])
            except (OSError, ValueError):
                status, body = 0, {}
            if status == 200:
                return time.monotonic() - started
            checks = body.get("checks", {})
            waiting = ", ".join(
                f"{k}: {v.get('detail') or 'not ready'}"
                for k, v in checks.items()
                if not v.get("ready")
            )
            line = f"  waiting for /readyz: {waiting or 'no answer yet'}"
            if line != last:
                print(line, flush=True)
                last = line
            if STOP.wait(0.5):
                raise KeyboardInterrupt
        raise RunError(f"/readyz not ready after {timeout:.0f} s\n{self.bridge.log_tail()}")

    def write_stack_file(self) -> None:
        self.info.update(
            bootstrap_servers=self.bootstrap,
            config=str(self.config),
            pid=os.getpid(),
            bridge_log=str(RUN_DIR / "bridge.log"),
            simulator_log=str(RUN_DIR / "simulator.log"),
        )
        STACK_FILE.write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")

    # -- stop -------------------------------------------------------------------------------

    def stop(self, settings: Any | None) -> bool:
        """Bridge, simulator, broker; True when the bridge stopped cleanly (exit 0)."""
        if self._stopped:
            return True
        self._stopped = True
        clean = True
        if STACK_FILE.is_file():
            with contextlib.suppress(OSError, ValueError):
                if json.loads(STACK_FILE.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    STACK_FILE.unlink()
        grace = settings.dispatcher.shutdown_grace_seconds if settings is not None else 30.0
        if self.bridge is not None:
            print("stopping the bridge ...", flush=True)
            code = self.bridge.stop(grace + BRIDGE_EXTRA_STOP_SECONDS)
            clean = code == 0
            print(f"  bridge exited with code {code}", flush=True)
        if self.simulator is not None:
            print("stopping the simulator ...", flush=True)
            code = self.simulator.stop(SIMULATOR_STOP_SECONDS)
            how = f"code {code}" if code is None or code >= 0 else signal.Signals(-code).name
            print(f"  simulator stopped ({how})", flush=True)
        if self.broker is not None:
            print("stopping the Kafka broker ...", flush=True)
            self.broker.stop()
            print("  broker stopped", flush=True)
        return clean


STOP = threading.Event()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if STOP.is_set():
        print("(already stopping; wait for it)", flush=True)
        return
    print(f"\n{signal.Signals(signum).name} received: stopping", flush=True)
    STOP.set()


def _read_line(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def _drain(stream: IO[str], log_path: Path) -> None:
    with log_path.open("a", encoding="utf-8") as log:
        for line in stream:
            log.write(line)
            log.flush()


def _print_where(stack: Stack) -> None:
    i = stack.info
    rows = [
        ("Kafka bootstrap", f"{stack.bootstrap}  ({stack.broker_note})"),
        ("Icareus simulator", i["simulator_url"]),
        ("simulator admin", f"{i['simulator_admin_url']}  (/state /stats /calls /faults)"),
        ("bridge /metrics", i["metrics_url"]),
        ("bridge /healthz", i["healthz_url"]),
        ("bridge /readyz", i["readyz_url"]),
        ("logs", f"{i['bridge_log']}, {i['simulator_log']}"),
        ("stack file", str(STACK_FILE)),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    print("\nready. `make demo` in another terminal; Ctrl-C stops everything.", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_local.py",
        description="Run broker, Icareus simulator and bridge locally until Ctrl-C.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH")
    parser.add_argument(
        "--bootstrap", default=None, help="use this Kafka broker instead of a local one"
    )
    parser.add_argument(
        "--own-broker",
        action="store_true",
        help="start a broker even when the one of `make kafka-up` is running",
    )
    parser.add_argument(
        "--sim-latency-ms",
        type=float,
        default=20.0,
        help="latency the simulator adds to every Icareus call (default 20)",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=READY_TIMEOUT_SECONDS, metavar="SECONDS"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from icareus_bridge.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"run_local: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stack = Stack(args)
    code = 0
    try:
        stack.start_broker()
        if STOP.is_set():
            return 0
        simulator_url = stack.start_simulator(settings)
        stack.start_bridge(settings, simulator_url)
        seconds = stack.wait_ready(args.ready_timeout)
        stack.write_stack_file()
        print(f"bridge ready in {seconds:.1f} s")
        _print_where(stack)
        while not STOP.wait(0.5):
            for child in (stack.simulator, stack.bridge):
                if child is not None and not child.alive():
                    print(
                        f"the {child.name} exited unexpectedly (code "
                        f"{child.process.returncode})\n{child.log_tail()}",
                        file=sys.stderr,
                        flush=True,
                    )
                    STOP.set()
                    code = 1
    except KeyboardInterrupt:
        pass
    except (RunError, local_kafka.LocalKafkaError) as exc:
        print(f"run_local: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if not stack.stop(settings) and code == 0:
            code = 1
    print("stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
