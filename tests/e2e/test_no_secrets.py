"""No secret and no personal data in any output of the bridge: one story through `icareus-bridge
run` (both roles) and the simulator, each a process of its own, over HTTPS, with recognisable
values: the organization key (from a key file) and a subscriber's names, e-mail, phone, postal
code and city (the SCRAM password needs the SASL_SSL broker: tests/e2e/test_sasl_ssl.py searches
results, /metrics, CLI output and logs for it). The story has completed requests, a request
rejected by Icareus, a request that fails into the DLQ (and the one parked behind it), and a
poison event. Then every log line of both processes, every result (key, raw and decoded value,
headers), every dead-letter header, the `/metrics` scrape and the output of the CLI commands is
searched for those values. Only the requests and state topics (and the DLQ values, which are
their records or CRM's events, untouched) may hold them: docs/SECURITY.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pytest
import trustme

from icareus_bridge.core.model import (
    Action,
    LifecycleEvent,
    Subscriber,
    Subscription,
    SubscriptionState,
)
from icareus_bridge.icareus.simulator import READY_PREFIX, SimulatorAdmin
from tests.e2e.harness import (
    BRIDGE,
    CODEC,
    WAIT_SECONDS,
    Bridge,
    Crm,
    TopicReader,
    box,
    bridge_config,
    header,
    service,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ORG_KEY = "orgkey-LEAKPROBE-5e1f9a7c"
FIRST = "Xanthippe"
LAST = "Zedlova-Quist"
EMAIL = "xanthippe.zq@leakprobe.example"
PHONE = "+357 99 123987"
POSTAL = "PQ-4521"
CITY = "Leakvillebury"
SECRETS = {"organization key": ORG_KEY}
PERSONAL = {
    "first name": FIRST,
    "last name": LAST,
    "e-mail": EMAIL,
    "phone": PHONE,
    "postal code": POSTAL,
    "city": CITY,
}
VP1 = "ICAREUS-VP1"
MAX_ATTEMPTS = 2


def forms(value: str) -> set[str]:
    """A value as it may appear in an output: as is, form- or URL-encoded, JSON-escaped."""
    return {value, quote_plus(value), quote(value, safe=""), json.dumps(value)[1:-1]}


PROBES = {name: forms(v) for name, v in {**SECRETS, **PERSONAL}.items()}


def leaks(where: str, text: str | bytes, probes: dict[str, set[str]] = PROBES) -> list[str]:
    """What of the probe values `text` holds, as "<where>: <what>" lines."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [
        f"{where}: {name}" for name, variants in probes.items() if any(v in text for v in variants)
    ]


# --- the processes ---------------------------------------------------------------------------


@dataclass
class Simulator:
    proc: subprocess.Popen[bytes]
    base_url: str
    admin_url: str
    log: Path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@pytest.fixture
def simulator(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Simulator]:
    """`icareus-bridge simulator` over HTTPS, its stdout and stderr kept in a file."""
    log = tmp_path / "simulator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    env["ICAREUS_BRIDGE__ICAREUS__KEY"] = ORG_KEY
    tls = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"])]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BRIDGE), "simulator", "--port", "0", *tls],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while READY_PREFIX not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.05)
        line = next(x for x in log.read_text().splitlines() if x.startswith(READY_PREFIX))
        root = line[len(READY_PREFIX) :].split()[0]
        assert urlsplit(root).scheme == "https"
        yield Simulator(proc, root + "/api", root + "/_sim", log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class SecretBridge(Bridge):
    """`icareus-bridge run` with the organization key from its key file, and its commands."""

    def cli(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(BRIDGE), *args] + (["--config", str(self.config_path)] if config else [])
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
        )

    def logs(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(self.workdir.glob("bridge-*.log")):
            lines += path.read_text(errors="replace").splitlines()
        return lines


@pytest.fixture
def bridge(
    kafka_bootstrap: str, simulator: Simulator, pki: dict[str, Path], tmp_path: Path
) -> Iterator[SecretBridge]:
    key_file = tmp_path / "organization.key"
    key_file.write_text(ORG_KEY + "\n", encoding="utf-8")
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    unique = uuid.uuid4().hex[:8]
    config["topics"]["replay_log"] = f"e2e-{unique}-replay-log"
    config["kafka"]["transactional_id_prefix"] = f"e2e-{unique}"
    del config["icareus"]["key"]
    config["icareus"].update(
        {
            "key_file": str(key_file),
            "ca_file": str(pki["ca"]),
            "retry": {
                "max_attempts": MAX_ATTEMPTS,
                "max_total_seconds": 1.0,
                "initial_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.1,
                "jitter_seconds": 0.01,
            },
        }
    )
    process = SecretBridge(
        config, tmp_path
    )
    process.start().wait_ready()
    try:
        yield process
    finally:
        process.stop_quietly()


# --- the story -------------------------------------------------------------------------------


def event(
    sub_id: str, version: int, *items: str, products: Iterable[str] = ("BASIC-TV",)
) -> LifecycleEvent:
    subscription = Subscription(
        id=sub_id,
        number=f"N{sub_id}",
        version=version,
        state=SubscriptionState.EFFECTIVE,
        subscriber=Subscriber(
            account_number=f"AC-{sub_id}",
            first_name=FIRST,
            last_name=LAST,
            email=EMAIL,
            phone=PHONE,
            country_code="CY",
            postal_code=POSTAL,
            city=CITY,
        ),
        services=tuple(service(f"s-{p}", p, VP1) for p in products),
        installed_items=tuple(box(serial, VP1) for serial in items),
    )
    return LifecycleEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=int(time.time() * 1000),
        action=Action(code="BECOME_SUBSCRIBER"),
        subscription=subscription,
    )


def test_no_secret_or_personal_data_reaches_logs_results_dead_letter_headers_metrics_or_cli(
    bridge: SecretBridge, simulator: Simulator, pki: dict[str, Path], tmp_path: Path
) -> None:
    bootstrap = bridge.config["kafka"]["bootstrap_servers"]
    crm = Crm(bootstrap, bridge.topics)
    admin = SimulatorAdmin(simulator.admin_url, ca_file=pki["ca"])
    requests = TopicReader(bootstrap, bridge.topics["requests"])
    state = TopicReader(bootstrap, bridge.topics["state"])
    replay_log = TopicReader(bootstrap, bridge.config["topics"]["replay_log"])
    unique = uuid.uuid4().hex[:6]
    ok, device_taken, refused, failing = (f"{n}-{unique}" for n in ("OK", "TAKEN", "REF", "DLQ"))
    try:
        # Completed: ADD_USER with the whole profile, ACTIVATE_PRODUCTS, ADD_DEVICE.
        first = event(ok, 1, f"SN-{unique}")
        crm.publish(first)
        assert {r.life_cycle_state.value for r in crm.results_of(first, 3)} == {"COMPLETED"}
        # Rejected by Icareus: the box is registered to the first subscriber (DEVICE_IN_USE).
        taken = event(device_taken, 1, f"SN-{unique}")
        crm.publish(taken)
        got = {r.type.value: r for r in crm.results_of(taken, 3)}
        assert got["ADD_DEVICE"].life_cycle_state.value == "REJECTED"
        assert "DEVICE_IN_USE" in (got["ADD_DEVICE"].error_description or "")
        # Rejected by Icareus on ADD_USER itself (and its dependants by the bridge).
        admin.set_faults(
            error_code="INVALID_PROFILE",
            script=[{"fault": "status_error", "action": "addUser", "times": 1}],
        )
        rejected = event(refused, 1)
        crm.publish(rejected)
        add_user = crm.results_of(rejected, 2)[0]
        assert add_user.error_code == "ICAREUS_REJECTED"
        assert "INVALID_PROFILE" in (add_user.error_description or "")
        # Into the DLQ: Icareus fails ADD_USER for the whole retry budget; the rest is parked.
        admin.set_faults(script=[{"fault": "http_503", "action": "addUser", "times": 50}])
        dead = event(failing, 1, f"SN-{unique}-2")
        crm.publish(dead)
        letters = crm.dead_letters.until(lambda rs: len(rs) >= 3)
        assert [header(m, "dlq.reason") for m in letters[:3]] == [
            "RETRIES_EXHAUSTED",
            "PARKED",
            "PARKED",
        ]
        # A poison event with the subscriber's data: refused at validation, into the DLQ.
        poison = event(f"POISON-{unique}", 1)
        poison = poison.model_copy(
            update={
                "subscription": poison.subscription.model_copy(
                    update={"services": (service("s-x", "B" * 2000, VP1),)}
                )
            }
        )
        crm.producer.produce(
            bridge.topics["input"],
            key=poison.subscription.id.encode(),
            value=CODEC.encode_event(poison),
        )
        crm.producer.flush(10)
        letters = crm.dead_letters.until(lambda rs: len(rs) >= 4)
        assert header(letters[3], "dlq.reason") == "INVALID"

        found: list[str] = []
        # Results: key, raw value, decoded value, headers.
        results = crm.results.poll(1.0)
        assert len(results) == 3 + 3 + 2
        for m in results:
            where = f"result {m.partition()}@{m.offset()}"
            found += leaks(f"{where} key", m.key() or b"")
            found += leaks(f"{where} value", m.value())
            found += leaks(f"{where} decoded", CODEC.decode_result(m.value()).model_dump_json())
            found += leaks(f"{where} headers", repr(m.headers()))
        # Dead letters: every header (error message, response excerpt included).
        for m in letters:
            for k, v in m.headers() or []:
                found += leaks(f"dead letter {m.offset()} header {k}", bytes(v))
        # The CLI, against the running bridge's topics.
        admin.set_faults(script=[])
        archive_dir = tmp_path / "archive"
        runs = {
            "replay --dry-run": bridge.cli("replay", "--dry-run"),
            "replay --dry-run --json": bridge.cli("replay", "--dry-run", "--json"),
            "replay": bridge.cli("replay"),
            "replay --history": bridge.cli("replay", "--history"),
            "replay --history --json": bridge.cli("replay", "--history", "--json"),
            "archive": bridge.cli("archive", "--older-than", "0", "--out", str(archive_dir)),
            "archive search": bridge.cli("archive", "search", str(archive_dir), config=False),
            "archive search --json": bridge.cli(
                "archive", "search", "--json", str(archive_dir), config=False
            ),
            "status": bridge.cli("status", "--subscription", ok),
        }
        event_file = tmp_path / "event.json"
        event_file.write_text(first.model_dump_json(), encoding="utf-8")
        runs["explain"] = bridge.cli("explain", "--event", str(event_file))
        for command in ("", "run", "simulator", "explain", "replay", "archive", "reset", "status"):
            runs[f"{command} --help"] = bridge.cli(*command.split(), "--help", config=False)
        for name, run in runs.items():
            found += leaks(f"`{name}` stdout", run.stdout)
            found += leaks(f"`{name}` stderr", run.stderr)
        # 1: the poison event is refused without --force (stage validate), the rest replayed.
        assert runs["replay --dry-run"].returncode == 1, runs["replay --dry-run"].stderr
        assert runs["replay"].returncode == 1, runs["replay"].stderr
        assert runs["archive search --json"].returncode == 0, runs["archive search --json"].stderr
        assert runs["archive search --json"].stdout.strip(), "the archive holds no result"
        assert runs["explain"].returncode == 0, runs["explain"].stderr
        # The replayed dead letters completed (the parked key drained).
        crm.results.until(lambda rs: len(rs) >= 3 + 3 + 2 + 3)

        # /metrics, then every log line of both processes (the bridge stopped cleanly first).
        found += leaks("/metrics", bridge.metrics())
        assert bridge.terminate() == 0
        logs = bridge.logs()
        assert any("request dead-lettered" in line for line in logs), "the bridge logged nothing"
        for n, line in enumerate(logs):
            found += leaks(f"bridge log line {n + 1}", line)
        for n, line in enumerate(simulator.log.read_text(errors="replace").splitlines()):
            found += leaks(f"simulator log line {n + 1}", line)
        # The replay log: the ledger of replayed dead letters and the audit of each run.
        ledger = replay_log.poll(1.0)
        assert ledger, "replay wrote no ledger"
        for m in ledger:
            found += leaks(f"replay log {m.offset()} key", m.key() or b"")
            found += leaks(f"replay log {m.offset()} value", m.value() or b"")
            found += leaks(f"replay log {m.offset()} headers", repr(m.headers()))

        assert found == [], "\n".join(found)

        # The probes are real: the records that must carry the data to Icareus do hold it.
        personal = {k: v for k, v in PROBES.items() if k in PERSONAL}
        assert leaks("requests", b"".join(m.value() for m in requests.poll(1.0)), personal)
        assert leaks("state", b"".join(m.value() or b"" for m in state.poll(1.0)), personal)
        users = admin.state()["users"]
        assert any(u["externalId"] == f"N{ok}-{VP1}" for u in users)
    finally:
        for reader in (requests, state, replay_log):
            reader.close()
        admin.close()
        crm.close()


def test_the_explain_output_shows_no_personal_data_and_its_state_plans_the_next_step(
    tmp_path: Path,
) -> None:
    first = event("EXPLAIN-1", 1, "SN-EXPLAIN-1")
    event_file = tmp_path / "event.json"
    event_file.write_text(first.model_dump_json(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    done = subprocess.run(
        [sys.executable, "-m", "icareus_bridge.cli", "explain", "--event", str(event_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert leaks("explain", done.stdout) == []
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["requests"][0]["type"] == "ADD_USER"
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(out["state"]), encoding="utf-8")
    second = event("EXPLAIN-1", 2, "SN-EXPLAIN-1", products=("BASIC-TV", "SPORTS"))
    event_file.write_text(second.model_dump_json(), encoding="utf-8")
    explain = [sys.executable, "-m", "icareus_bridge.cli", "explain"]
    again = subprocess.run(
        [*explain, "--event", str(event_file), "--state", str(state_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert [r["type"] for r in json.loads(again.stdout)["requests"]] == ["ACTIVATE_PRODUCTS"]
    assert leaks("explain --state", again.stdout) == []
