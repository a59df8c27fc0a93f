"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) assembled from
Maven Central, for tests and local work on machines without Docker.

Usable as a script (`python tools/kafka/local_kafka.py fetch|up|down|status|run`) and as a module
(`LocalKafka`, `fetch`) once `tools/kafka` is on `sys.path`, as `tests/conftest.py` does.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parents[1]
POM = TOOLS_DIR / "pom.xml"
LOG4J_CONFIG = TOOLS_DIR / "log4j2.properties"
STATE_DIR = REPO_ROOT / "var" / "kafka"  # git-ignored (/var/ in .gitignore)
LIB_ENV = "ICAREUS_KAFKA_LIB"
MARKER = ".complete"
DEFAULT_PORT = 9092
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0
HEAP = ("-Xms256m", "-Xmx512m")
PR_SET_PDEATHSIG = 1


class LocalKafkaError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""


def kafka_version() -> str:
    """The Kafka version pinned in pom.xml, the one source of it."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not node.text:
        raise LocalKafkaError(f"{POM}: no <kafka.version> property")
    return node.text.strip()


def lib_dir() -> Path:
    """Where the broker's jars live: $ICAREUS_KAFKA_LIB, else a per-version user cache."""
    override = os.environ.get(LIB_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "icareus-bridge" / f"kafka-{kafka_version()}" / "lib"


def _is_complete(lib: Path) -> bool:
    marker = lib / MARKER
    if not marker.is_file():
        return False
    jars = marker.read_text(encoding="utf-8").split()
    return bool(jars) and all((lib / jar).is_file() for jar in jars)


def fetch(lib: Path | None = None, quiet: bool = False) -> Path:
    """Download the broker's runtime jars into `lib` once; a marker written last makes it reusable.

    Maven copies into a staging folder that is renamed into place only when complete, so an
    interrupted download never looks like a usable broker.
    """
    lib = lib or lib_dir()
    if _is_complete(lib):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka's jars")
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{lib.name}-", dir=lib.parent))
    try:
        if not quiet:
            print(f"fetching Apache Kafka {kafka_version()} jars into {lib}", file=sys.stderr)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-3000:]
            raise LocalKafkaError(f"mvn failed (exit {result.returncode}):\n{tail}")
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(j.startswith("kafka_2.13-") for j in jars):
            raise LocalKafkaError(f"mvn finished but {staging} holds no kafka_2.13 jar")
        (staging / MARKER).write_text("\n".join(jars) + "\n", encoding="utf-8")
        if lib.exists():
            shutil.rmtree(lib)
        staging.rename(lib)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_id() -> str:
    # Kafka's Uuid.randomUuid().toString(): URL-safe base64 of 16 bytes, unpadded, never with a
    # leading '-' (it would read as a command-line option). Made here to save a JVM start.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def broker_properties(data_dir: Path, port: int, controller_port: int) -> str:
    """server.properties of a combined broker+controller that can run transactions alone."""
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
# One node: internal topics with replication 1, or init_transactions times out waiting for a
# coordinator (the defaults are 3 replicas, min ISR 2).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
num.partitions=1
# Consumer groups in tests form at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
# The bridge creates its own topics at start; a broker that invents them would hide a bug.
auto.create.topics.enable=false
"""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL to the JVM when the
    # thread that started it dies, so a crashed test run leaves no broker behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LocalKafka:
    """One broker process in `state_dir`: `server.properties`, `data/`, `server.log`,
    `console.log`. Use as a context manager, or `start()` + `wait_ready()` + `stop()`."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        lib: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.lib = lib or lib_dir()
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.state_dir / "server.properties"

    def _java(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java is not on PATH; Kafka 4.x needs Java 17 or newer")
        return [
            java,
            *HEAP,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.state_dir}",
            "-cp",
            f"{self.lib}/*",  # expanded by Java, not by a shell
            main_class,
            *args,
        ]

    def format(self) -> None:
        """Write server.properties and format an empty KRaft log directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.state_dir / "data"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        self.properties_file.write_text(
            broker_properties(data_dir, self.port, self.controller_port), encoding="utf-8"
        )
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(self.properties_file),
        )
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise LocalKafkaError(
                f"formatting {data_dir} failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )

    def start(self, detached: bool = False) -> None:
        """Start the JVM. Attached brokers die with their parent; detached ones outlive it."""
        fetch(self.lib, quiet=True)
        if not self.properties_file.is_file():
            self.format()
        console = (self.state_dir / "console.log").open("ab")
        try:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.properties_file)),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=detached,
                preexec_fn=None if detached or sys.platform != "linux" else _die_with_parent,
            )
        finally:
            console.close()
        self._started_at = time.monotonic()
        if not detached:
            atexit.register(self.stop)

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> float:
        """Block until an AdminClient gets metadata; returns seconds since `start()`."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalKafkaError(
                    f"broker exited with code {self.process.returncode} before it was ready\n"
                    + self.log_tail()
                )
            # A TCP probe first: librdkafka would log every refused connection while the JVM boots.
            if not _accepts_connections(self.port):
                time.sleep(0.1)
                continue
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            try:
                admin.list_topics(timeout=2)
            except Exception:  # KafkaException while the broker is still starting
                time.sleep(0.1)
                continue
            self.ready_seconds = time.monotonic() - self._started_at
            return self.ready_seconds
        raise LocalKafkaError(
            f"broker at {self.bootstrap_servers} not ready after {timeout:.0f} s\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("server.log", "console.log"):
            path = self.state_dir / name
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- tail of {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no broker log in {self.state_dir})"

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM (Kafka shuts down cleanly on it), SIGKILL if it takes longer than `timeout`."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalKafka:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def temporary_broker() -> Iterator[LocalKafka]:
    """A fresh broker on free ports in a temporary directory, removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="icareus-kafka-") as tmp,
        LocalKafka(Path(tmp)) as broker,
    ):
        yield broker


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the detached broker for manual work (var/kafka/) -------------------------------------------

PID_FILE = STATE_DIR / "kafka.pid"


def _running_pid() -> int | None:
    """The pid in the pid file if that process is still our broker (pids get reused)."""
    try:
        pid = int(PID_FILE.read_text(encoding="utf-8").split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"kafka.Kafka" in cmdline else None


def _recorded_ports() -> tuple[int, int] | None:
    props = STATE_DIR / "server.properties"
    if not props.is_file():
        return None
    for line in props.read_text(encoding="utf-8").splitlines():
        if line.startswith("listeners="):
            ports = [int(part.rsplit(":", 1)[1]) for part in line.split("=", 1)[1].split(",")]
            return ports[0], ports[1]
    return None


def _manual_broker(fresh: bool) -> LocalKafka:
    """The var/kafka broker: its data and ports survive `down`/`up` unless `fresh` or taken."""
    recorded = None if fresh else _recorded_ports()
    if recorded and port_is_free(recorded[0]) and port_is_free(recorded[1]):
        return LocalKafka(STATE_DIR, port=recorded[0], controller_port=recorded[1])
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
    return LocalKafka(STATE_DIR, port=port)


def cmd_fetch(_: argparse.Namespace) -> int:
    print(fetch())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    pid = _running_pid()
    ports = _recorded_ports()
    if pid is not None and ports is not None:
        print(f"already running (pid {pid})", file=sys.stderr)
        print(f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports[0]}")
        return 0
    broker = _manual_broker(args.fresh)
    broker.start(detached=True)
    assert broker.process is not None
    PID_FILE.write_text(f"{broker.process.pid}\n", encoding="utf-8")
    try:
        seconds = broker.wait_ready()
    except LocalKafkaError:
        broker.stop()
        PID_FILE.unlink(missing_ok=True)
        raise
    print(f"broker ready in {seconds:.1f} s, pid {broker.process.pid}", file=sys.stderr)
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    pid = _running_pid()
    if pid is None:
        print("not running", file=sys.stderr)
        PID_FILE.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _running_pid() == pid:
        time.sleep(0.2)
    if _running_pid() == pid:
        os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    print(f"stopped (pid {pid})", file=sys.stderr)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    pid = _running_pid()
    ports = _recorded_ports()
    if pid is None or ports is None:
        print("not running")
        return 1
    up = _accepts_connections(ports[0])
    print(f"{'running' if up else 'starting'} (pid {pid})")
    print(f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports[0]}")
    return 0 if up else 1


def cmd_run(args: argparse.Namespace) -> int:
    if _running_pid() is not None:
        raise LocalKafkaError("a broker from `up` is running; `down` it first")
    broker = _manual_broker(args.fresh)
    broker.start()
    try:
        seconds = broker.wait_ready()
        print(f"broker ready in {seconds:.1f} s; Ctrl-C stops it", file=sys.stderr)
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        assert broker.process is not None
        broker.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local_kafka.py",
        description=f"Single-node Apache Kafka {kafka_version()} from Maven Central (no Docker).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker jars once (mvn)").set_defaults(func=cmd_fetch)
    for name, func, text in (
        ("up", cmd_up, "start a detached broker in var/kafka and print its address"),
        ("run", cmd_run, "run the var/kafka broker in the foreground until Ctrl-C"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--fresh", action="store_true", help="discard the broker's earlier data")
        p.set_defaults(func=func)
    sub.add_parser("down", help="stop the detached broker").set_defaults(func=cmd_down)
    sub.add_parser("status", help="is the detached broker up").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except LocalKafkaError as exc:
        print(f"local_kafka: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
