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
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

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


def broker_properties(
    data_dir: Path, port: int, controller_port: int, security: BrokerSecurity | None = None
) -> str:
    """server.properties of a combined broker+controller that can run transactions alone.

    With `security`, the client listener is SASL_SSL (SCRAM, PEM key and trust stores) and
    carries the inter-broker traffic too; the controller listener stays PLAINTEXT on loopback."""
    listener = "PLAINTEXT" if security is None else "SASL_SSL"
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listener}://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name={listener}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}
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
""" + ("" if security is None else security.properties())


# --- SASL_SSL: a test CA, the broker's certificate and SCRAM users ------------------------------

SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"  # the broker's own SCRAM user, for inter-broker traffic
CERT_HOSTS = ("127.0.0.1", "localhost")
CERT_DAYS = 30


@dataclass(frozen=True)
class TestPki:
    """PEM files of one test CA and a certificate it issued: `ca_file` (the CA certificate,
    the trust store of the broker and of its clients), `cert_file` and `key_file` (the leaf
    certificate and its unencrypted PKCS#8 key) and `keystore_file` (key + certificate chain
    in one file, Kafka's `ssl.keystore.type=PEM` layout)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    keystore_file: Path


def write_test_pki(
    directory: Path, name: str = "icareus-test", hosts: tuple[str, ...] = CERT_HOSTS
) -> TestPki:
    """A new CA (own key, self-signed) and a certificate for `hosts` (IP or DNS subject
    alternative names, so hostname verification passes), written into `directory`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # a dev dependency (pyproject.toml)
        raise LocalKafkaError(f"the SASL_SSL broker needs Python's cryptography: {exc}") from exc

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    leaf_pem = leaf_cert.public_bytes(pem)
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pki = TestPki(
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
        keystore_file=directory / "keystore.pem",
    )
    pki.ca_file.write_bytes(ca_pem)
    pki.cert_file.write_bytes(leaf_pem + ca_pem)
    for path, data in ((pki.key_file, key_pem), (pki.keystore_file, key_pem + leaf_pem + ca_pem)):
        path.touch(mode=0o600)
        path.write_bytes(data)
    return pki


def _scram_value(text: str) -> str:
    # `--add-scram` and JAAS both read these between double quotes; keep the test's values plain.
    if not text or any(c in text for c in '"\\,=[]; \n'):
        raise LocalKafkaError(f"SCRAM user names and passwords must be plain words, got {text!r}")
    return text


@dataclass(frozen=True)
class BrokerSecurity:
    """What makes a broker's client listener SASL_SSL: the PEM files of `pki` and the SCRAM
    users (name -> password), the broker's own user included (added when missing)."""

    pki: TestPki
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = SCRAM_MECHANISM

    def __post_init__(self) -> None:
        users = dict(self.users)
        users.setdefault(BROKER_USER, secrets.token_urlsafe(18).replace("-", "x"))
        for name, password in users.items():
            _scram_value(name)
            _scram_value(password)
        object.__setattr__(self, "users", users)

    def scram_arguments(self) -> list[str]:
        """`kafka-storage format` options that create every user's SCRAM credential."""
        args: list[str] = []
        for name, password in self.users.items():
            args += ["--add-scram", f'{self.mechanism}=[name="{name}",password="{password}"]']
        return args

    def properties(self) -> str:
        password = self.users[BROKER_USER]
        return f"""\
# SASL_SSL: SCRAM users from `kafka-storage format --add-scram`, PEM key and trust stores.
sasl.enabled.mechanisms={self.mechanism}
sasl.mechanism.inter.broker.protocol={self.mechanism}
listener.name.sasl_ssl.{self.mechanism.lower()}.sasl.jaas.config=\\
org.apache.kafka.common.security.scram.ScramLoginModule required \\
username="{BROKER_USER}" password="{password}";
ssl.keystore.type=PEM
ssl.keystore.location={self.pki.keystore_file}
ssl.truststore.type=PEM
ssl.truststore.location={self.pki.ca_file}
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
"""

    def client_config(self, user: str = BROKER_USER, password: str | None = None) -> dict[str, Any]:
        """librdkafka settings of a client authenticating as `user` (its own password unless
        `password` is given) and trusting the test CA."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": user,
            "sasl.password": self.users[user] if password is None else password,
            "ssl.ca.location": str(self.pki.ca_file),
        }


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL to the JVM when the
    # thread that started it dies, so a crashed test run leaves no broker behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LocalKafka:
    """One broker process in `state_dir`: `server.properties`, `data/`, `server.log`,
    `console.log`. Use as a context manager, or `start()` + `wait_ready()` + `stop()`.
    With `security` its client listener is SASL_SSL instead of PLAINTEXT."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        lib: Path | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.security = security
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

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings that reach this broker (as the broker's own user if secured)."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.security is not None:
            conf.update(self.security.client_config())
        return conf

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
            broker_properties(data_dir, self.port, self.controller_port, self.security),
            encoding="utf-8",
        )
        self.properties_file.chmod(0o600)  # holds the broker's SCRAM password when secured
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(self.properties_file),
            *(self.security.scram_arguments() if self.security is not None else ()),
        )
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise LocalKafkaError(
                f"formatting {data_dir} failed (exit {result.returncode}):\n"
                f"{self._hide_passwords(result.stdout + result.stderr)[-3000:]}"
            )

    def _hide_passwords(self, text: str) -> str:
        for password in self.security.users.values() if self.security is not None else ():
            text = text.replace(password, "[redacted]")
        return text

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
                admin = AdminClient(self.client_config())
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
def temporary_broker(security: BrokerSecurity | None = None) -> Iterator[LocalKafka]:
    """A fresh broker on free ports in a temporary directory, removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="icareus-kafka-") as tmp,
        LocalKafka(Path(tmp), security=security) as broker,
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
TLS_DIR = STATE_DIR / "tls"  # `up --sasl-ssl`: test CA, broker certificate, SCRAM passwords
MANUAL_USER = "bridge"  # the SCRAM user `up --sasl-ssl` makes for the bridge and the tools


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


def _recorded_security() -> bool:
    """Whether the var/kafka broker was made with a SASL_SSL client listener."""
    props = STATE_DIR / "server.properties"
    return props.is_file() and "\nlisteners=SASL_SSL://" in props.read_text(encoding="utf-8")


def _password_file(user: str) -> Path:
    return TLS_DIR / f"{user}.password"


def _manual_security() -> BrokerSecurity:
    """The CA, certificate and SCRAM passwords of var/kafka/tls, made on first use and read
    back on later `up`s (the users live in the broker's data, formatted once)."""
    files = TestPki(
        ca_file=TLS_DIR / "ca.pem",
        cert_file=TLS_DIR / "cert.pem",
        key_file=TLS_DIR / "key.pem",
        keystore_file=TLS_DIR / "keystore.pem",
    )
    users = (BROKER_USER, MANUAL_USER)
    made = [files.ca_file, files.keystore_file] + [_password_file(u) for u in users]
    if all(path.is_file() for path in made):
        passwords = {u: _password_file(u).read_text(encoding="utf-8").strip() for u in users}
        return BrokerSecurity(files, passwords)
    pki = write_test_pki(TLS_DIR, name="icareus-local")
    security = BrokerSecurity(pki, {MANUAL_USER: secrets.token_hex(16)})
    for user in users:
        path = _password_file(user)
        path.touch(mode=0o600)
        path.write_text(security.users[user] + "\n", encoding="utf-8")
    return security


def _manual_broker(fresh: bool, sasl_ssl: bool = False) -> LocalKafka:
    """The var/kafka broker: its data and ports survive `down`/`up` unless `fresh`, taken, or
    asked for with the other kind of client listener (PLAINTEXT or SASL_SSL)."""
    recorded = None if fresh or _recorded_security() != sasl_ssl else _recorded_ports()
    if recorded and port_is_free(recorded[0]) and port_is_free(recorded[1]):
        security = _manual_security() if sasl_ssl else None
        return LocalKafka(
            STATE_DIR, port=recorded[0], controller_port=recorded[1], security=security
        )
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
    return LocalKafka(STATE_DIR, port=port, security=_manual_security() if sasl_ssl else None)


def _print_address(broker: LocalKafka) -> None:
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    if broker.security is None:
        return
    # The bridge's settings for this broker, as environment overrides (no password printed).
    prefix = "ICAREUS_BRIDGE__KAFKA__"
    for key, value in (
        ("BOOTSTRAP_SERVERS", broker.bootstrap_servers),
        ("SECURITY_PROTOCOL", "SASL_SSL"),
        ("SASL_MECHANISM", broker.security.mechanism),
        ("SASL_USERNAME", MANUAL_USER),
        ("SASL_PASSWORD_FILE", _password_file(MANUAL_USER)),
        ("SSL_CA_LOCATION", broker.security.pki.ca_file),
    ):
        print(f"{prefix}{key}={value}", flush=True)


def cmd_fetch(_: argparse.Namespace) -> int:
    print(fetch())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    pid = _running_pid()
    ports = _recorded_ports()
    if pid is not None and ports is not None:
        if _recorded_security() != args.sasl_ssl:
            raise LocalKafkaError(
                f"a broker {'with' if _recorded_security() else 'without'} --sasl-ssl is "
                f"running (pid {pid}); `down` it first"
            )
        print(f"already running (pid {pid})", file=sys.stderr)
        running = LocalKafka(STATE_DIR, port=ports[0], controller_port=ports[1])
        if args.sasl_ssl:
            running.security = _manual_security()
        _print_address(running)
        return 0
    broker = _manual_broker(args.fresh, args.sasl_ssl)
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
    _print_address(broker)
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
    listener = "SASL_SSL" if _recorded_security() else "PLAINTEXT"
    print(f"{'running' if up else 'starting'} (pid {pid}, {listener} listener)")
    print(f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports[0]}")
    return 0 if up else 1


def cmd_run(args: argparse.Namespace) -> int:
    if _running_pid() is not None:
        raise LocalKafkaError("a broker from `up` is running; `down` it first")
    broker = _manual_broker(args.fresh, args.sasl_ssl)
    broker.start()
    try:
        seconds = broker.wait_ready()
        print(f"broker ready in {seconds:.1f} s; Ctrl-C stops it", file=sys.stderr)
        _print_address(broker)
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
        p.add_argument(
            "--sasl-ssl",
            action="store_true",
            help=f"client listener SASL_SSL ({SCRAM_MECHANISM}, a test CA in var/kafka/tls) "
            "instead of PLAINTEXT",
        )
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
