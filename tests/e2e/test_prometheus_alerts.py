"""The watching side against a real Prometheus server (Debian's /usr/bin/prometheus): it scrapes
a running bridge (broker + simulator + `icareus-bridge run`) with the project's alert rules,
generated from deploy/prometheus/alerts.yml with short `for:` durations and ranges. An Icareus
outage through the simulator's admin API makes requests dead-letter and park their key: the
dead-letter and parked-key alerts fire; after recovery the dead-letter alert resolves, while
the parked key stays until `icareus-bridge replay` brings its requests back, and then its alert
resolves too. Every query of the Grafana dashboard runs
against the same server and names only metrics the bridge exports; `promtool check metrics`
is clean on a scrape of the running bridge."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from tests.e2e.harness import BRIDGE, Bridge, Crm, CrmSubscription, box, bridge_config, free_port
from tests.e2e.harness import service as crm_service
from tests.unit.test_alert_rules import metric_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "icareus-bridge.json"
PROMETHEUS = "/usr/bin/prometheus"
VP1 = "ICAREUS-VP1"
EFFECTIVE = SubscriptionState.EFFECTIVE
WAIT_SECONDS = 60.0
# Rules run 20 times faster than written (a 5 minute range becomes 15 s), `for:` becomes 1 s.
SPEED_UP = 20
MIN_RANGE_SECONDS = 10
# Dashboard variables as Grafana would fill them in.
DASHBOARD_VARIABLES = {
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$__range": "5m",
    '"$instance"': '".*"',
}
# A retry budget the outage exhausts within seconds, given the way operators would:
# environment overrides of the configuration.
RETRY_ENV = {
    "ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_ATTEMPTS": "2",
    "ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_TOTAL_SECONDS": "2",
    "ICAREUS_BRIDGE__ICAREUS__RETRY__INITIAL_BACKOFF_SECONDS": "0.1",
}


# --- the generated test rules ----------------------------------------------------------------


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def fast_rules(source: Path = RULES) -> dict[str, Any]:
    """alerts.yml with every range `[...]` shortened SPEED_UP times and every `for:` at 1 s."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))

    def shorter(match: re.Match[str]) -> str:
        seconds = max(_seconds(match.group(1)) // SPEED_UP, MIN_RANGE_SECONDS)
        return f"[{seconds}s]"

    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+[smhd](?:\d+[smhd])*)\]", shorter, rule["expr"])
            if "for" in rule:
                rule["for"] = "1s"
    return doc


def test_the_generated_rules_shorten_ranges_and_durations_only() -> None:
    original = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    fast = fast_rules()
    before = [r for g in original["groups"] for r in g["rules"]]
    after = [r for g in fast["groups"] for r in g["rules"]]
    assert [r["alert"] for r in after] == [r["alert"] for r in before]
    for a, b in zip(before, after, strict=True):
        assert b["labels"] == a["labels"] and b["annotations"] == a["annotations"]
        assert re.sub(r"\[[^\]]+\]", "[]", a["expr"]) == re.sub(r"\[[^\]]+\]", "[]", b["expr"])
    dead = next(r for r in after if r["alert"] == "IcareusBridgeDeadLetters")
    assert "[15s]" in dead["expr"] and dead["for"] == "1s"


# --- processes -------------------------------------------------------------------------------


class Prometheus:
    """Debian's Prometheus server on a free loopback port, scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = workdir / "rules.yml"
        rules.write_text(yaml.safe_dump(fast_rules()), encoding="utf-8")
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "icareus-bridge",
                            "scrape_timeout": "1s",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        until(lambda: self._ready(), "Prometheus ready", self.log_tail)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body: dict[str, Any] = json.loads(answer.read())
        except urllib.error.HTTPError as exc:  # 400/422: the answer says why
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alert_states(self) -> dict[str, str]:
        """Alert name -> its most advanced state (firing over pending) right now."""
        states: dict[str, str] = {}
        for alert in self.api("alerts")["data"]["alerts"]:
            name, state = alert["labels"]["alertname"], alert["state"]
            if states.get(name) != "firing":
                states[name] = state
        return states


def replay(bridge: Bridge) -> subprocess.CompletedProcess[str]:
    """`icareus-bridge replay` with the bridge's configuration file and environment."""
    return subprocess.run(
        [str(BRIDGE), "replay", "--config", str(bridge.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=bridge.environment(),
        stdin=subprocess.DEVNULL,
    )


def until(done: Callable[[], Any], what: str, detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{detail()}")
        time.sleep(0.25)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    workdir = tmp_path_factory.mktemp("watched-bridge")
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    unique = config["planner"]["instance_id"].removeprefix("p-")
    config["topics"]["replay_log"] = f"e2e-{unique}-replay-log"
    config["kafka"]["transactional_id_prefix"] = f"e2e-{unique}"
    process = Bridge(config, workdir, RETRY_ENV)
    try:
        process.start().wait_ready()
        yield process
    finally:
        process.stop_quietly()


@pytest.fixture(scope="module")
def prometheus(watched: Bridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), watched.http.removeprefix("http://"))
    try:
        server.start()
        until(
            lambda: server.query('up{job="icareus-bridge"} == 1'),
            "the bridge scraped",
            server.log_tail,
        )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def watched_crm(kafka_bootstrap: str, watched: Bridge) -> Iterator[Crm]:
    side = Crm(kafka_bootstrap, watched.topics)
    try:
        yield side
    finally:
        side.close()


@pytest.fixture(scope="module")
def traffic(watched_crm: Crm, simulator: SimulatorHandle, prometheus: Prometheus) -> None:
    """One subscription provisioned, one of its calls refused by Icareus (so every metric of
    the dashboard has series), and Prometheus has seen the results."""
    with simulator.admin() as admin:
        admin.set_faults(script=[{"fault": "status_error", "action": "addDevice", "times": 1}])
        sub = CrmSubscription("watched-ok")
        ev = sub.act(
            "BECOME_SUBSCRIBER",
            state=EFFECTIVE,
            services=(crm_service("s1", "BASIC-TV", VP1),),
            items=(box("SN-W1", VP1),),
        )
        watched_crm.publish(ev)
        states = sorted(r.life_cycle_state.value for r in watched_crm.results_of(ev, 3))
        assert states == ["COMPLETED", "COMPLETED", "REJECTED"]
        admin.set_faults(script=[])
    until(
        lambda: prometheus.query("sum(icareus_bridge_results_total) >= 3"),
        "results counted by Prometheus",
    )


# --- tests -----------------------------------------------------------------------------------


def test_promtool_finds_the_scrape_of_a_running_bridge_clean(
    watched: Bridge, traffic: None
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's `prometheus` package"
    scrape = watched.metrics()
    assert "icareus_bridge_consumer_lag_seconds{" in scrape
    assert "icareus_bridge_build_info{" in scrape
    done = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_an_icareus_outage_fires_the_dead_letter_and_parked_key_alerts_and_replay_resolves_them(
    watched: Bridge,
    watched_crm: Crm,
    prometheus: Prometheus,
    icareus: SimulatorAdmin,
    traffic: None,
) -> None:
    assert not {"IcareusBridgeDeadLetters", "IcareusBridgeParkedKeys"} & set(
        prometheus.alert_states()
    ), "alerts before any outage"
    icareus.set_faults(outage=True)
    stuck = CrmSubscription("watched-stuck")
    first = stuck.act(
        "BECOME_SUBSCRIBER", state=EFFECTIVE, services=(crm_service("s1", "BASIC-TV", VP1),)
    )
    later = stuck.act("ADD_SERVICE", services=stuck.services_with(crm_service("s2", "NEWS", VP1)))
    watched_crm.publish(first, later)
    watched_crm.dead_letters.until(
        lambda rs: len([m for m in rs if m.key() == stuck.id.encode()]) >= 3
    )

    def firing() -> bool:
        states = prometheus.alert_states()
        return all(
            states.get(name) == "firing"
            for name in ("IcareusBridgeDeadLetters", "IcareusBridgeParkedKeys")
        )

    until(
        firing, "dead-letter and parked-key alerts firing", lambda: str(prometheus.alert_states())
    )
    dead = prometheus.query(
        'sum by (stage, reason) (icareus_bridge_dead_letters_total{stage="dispatch"}) > 0'
    )
    assert {(d["metric"]["stage"], d["metric"]["reason"]) for d in dead} == {
        ("dispatch", "RETRIES_EXHAUSTED"),
        ("dispatch", "PARKED"),
    }
    # The log lines of the per-request path name the request, its event, subscription,
    # action, type and outcome.
    lines = [json.loads(x) for x in watched.log_tail(2000).splitlines() if x.startswith("{")]
    parked_lines = [x for x in lines if x.get("event") == "subscription parked"]
    assert parked_lines, "no 'subscription parked' log line"
    assert parked_lines[0]["subscription_id"] == stuck.id
    assert parked_lines[0]["event_id"] == first.event_id
    assert parked_lines[0]["action_code"] == "BECOME_SUBSCRIBER"
    assert parked_lines[0]["outcome"] == "parked"
    assert parked_lines[0]["request_type"] and parked_lines[0]["request_id"]
    # Icareus unreachable: the bridge says so through its readiness gauge as well.
    until(lambda: prometheus.query("icareus_bridge_ready == 0"), "not ready during the outage")

    icareus.set_faults(outage=False)
    healthy = CrmSubscription("watched-after")
    after = healthy.act(
        "BECOME_SUBSCRIBER", state=EFFECTIVE, services=(crm_service("s1", "BASIC-TV", VP1),)
    )
    watched_crm.publish(after)
    assert len(watched_crm.results_of(after, 2)) == 2

    def dead_letters_resolved() -> bool:
        return "IcareusBridgeDeadLetters" not in prometheus.alert_states()

    until(
        dead_letters_resolved,
        "the dead-letter alert resolved",
        lambda: str(prometheus.alert_states()),
    )
    until(lambda: prometheus.query("icareus_bridge_ready == 1"), "ready again after recovery")
    # The parked key stays parked until `replay` brings its request back: its alert keeps
    # firing, and the gauge still says one key.
    assert prometheus.alert_states().get("IcareusBridgeParkedKeys") == "firing"
    parked = prometheus.query("sum(icareus_bridge_parked_keys)")
    assert parked and float(parked[0]["value"][1]) == 1.0
    # Caught up again: no stage reports an old unfinished record.
    lag = prometheus.query("max by (group) (icareus_bridge_consumer_lag_seconds)")
    assert {x["metric"]["group"] for x in lag} == {
        watched.config["planner"]["group_id"],
        watched.config["dispatcher"]["group_id"],
    }
    assert all(float(x["value"][1]) < 30 for x in lag), lag

    # The operator replays the dead letters: the parking request comes back first, the key
    # unparks, the requests behind it follow, and the parked-key alert resolves as well.
    replayed = replay(watched)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed 3 of 3" in replayed.stdout, replayed.stdout
    assert len(watched_crm.results_of(first, 2)) == 2
    assert len(watched_crm.results_of(later, 1)) == 1
    until(
        lambda: prometheus.query("sum(icareus_bridge_parked_keys) == 0"),
        "no parked key on the gauge",
    )
    until(
        lambda: "IcareusBridgeParkedKeys" not in prometheus.alert_states(),
        "the parked-key alert resolved",
        lambda: str(prometheus.alert_states()),
    )
    # Replayed requests end in results, not in new dead letters.
    assert "IcareusBridgeDeadLetters" not in prometheus.alert_states()


def dashboard_expressions() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_every_dashboard_query_runs_and_names_exported_metrics(
    prometheus: Prometheus, traffic: None
) -> None:
    exported = set(
        prometheus.api("label/__name__/values", **{"match[]": '{job="icareus-bridge"}'})["data"]
    )
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    instance_query = variables["instance"]["definition"]
    expressions.append(("instance variable", instance_query.split("(", 1)[1].split(",")[0]))
    for title, expr in expressions:
        query = expr
        for variable, value in DASHBOARD_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"{title}: a variable left in {query}"
        answer = prometheus.api("query", query=query)
        assert answer["status"] == "success", f"{title}: {query}: {answer.get('error')}"
        missing = metric_names(query) - exported
        assert not missing, f"{title}: names metrics the bridge does not export: {missing}"
