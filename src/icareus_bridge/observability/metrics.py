"""Every Prometheus metric of ARCHITECTURE.md's Observability list, in one registry per process.

The planner and the dispatcher receive the same `Metrics` object and update the metrics that
are theirs; `/metrics` renders the registry. No module-level globals: tests build their own.

Naming follows Prometheus practice: base units (seconds), `_total` on counters (added by the
client library), no subscription ids or other unbounded values in labels. Counters whose label
values are known in advance (action codes, request types, states, reasons) start at zero, so a
rule sees 0 where nothing happened yet instead of an absent series. docs/OPERATIONS.md lists
them with the alerts built on them.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from icareus_bridge import __version__
from icareus_bridge.codec import DecodeReason
from icareus_bridge.core.model import ActionCode, LifeCycleState, RejectionCode, RequestType
from icareus_bridge.icareus.errors import TransientReason

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Finer around the latency targets (p50 100 ms, p99 250 ms), then as _E2E_BUCKETS.
_COMMITTED_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

ROLES = ("planner", "dispatcher")
EVENT_OUTCOMES = ("planned", "skipped", "dead_lettered")
FEEDBACK_OUTCOMES = ("applied", "ignored", "unknown_subscription")
TRANSACTION_OUTCOMES = ("committed", "aborted", "fatal")
CALL_OUTCOMES = ("ok", "permanent", "transient")
FINISHED_STATES = (LifeCycleState.COMPLETED.value, LifeCycleState.REJECTED.value)
# (dlq.stage, dlq.reason) pairs the bridge writes; docs/PIPELINE.md and docs/OPERATIONS.md.
DEAD_LETTER_REASONS: tuple[tuple[str, str], ...] = (
    *(("validate" if r is DecodeReason.INVALID else "decode", r.value) for r in DecodeReason),
    ("validate", "KEY_MISMATCH"),
    ("plan", "PLAN_FAILED"),
    ("plan", "FEEDBACK_FAILED"),
    ("dispatch", "RETRIES_EXHAUSTED"),
    ("dispatch", "AUTH_FAILED"),
    ("dispatch", "TLS_FAILED"),
    ("dispatch", "PARKED"),
    ("dispatch", "DISPATCH_FAILED"),
)


class LagClock:
    """How far behind one consumer group is, in time: per (topic, partition) the timestamps of
    the records it has read and not yet committed, and the records behind the end of the
    partition as last reported. `age_seconds` is the age of the oldest record not finished:
    the oldest one read and uncommitted; else, for a clock that `estimates_unread` records,
    while records are behind, the age of the last one committed (the next one is younger: an
    upper bound); else 0. The planner's clock estimates (its batches leave nothing read and
    uncommitted between them; an idle poll says it caught up). The dispatcher's does not: it
    reads ahead of its work, so what it has not finished has been read, and its offset lag
    counts the transaction markers after the last request, which are no work.

    Written by the stage's thread, read by the /metrics thread (a lock between them)."""

    def __init__(
        self,
        group: str,
        now_ms: Callable[[], float] | None = None,
        *,
        estimates_unread: bool = False,
    ) -> None:
        self.group = group
        self.estimates_unread = estimates_unread
        self._now_ms = now_ms or (lambda: time.time() * 1000.0)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], deque[tuple[int, float]]] = {}
        self._last_done_ms: dict[tuple[str, int], float] = {}
        self._behind: dict[tuple[str, int], int] = {}

    def read(self, topic: str, partition: int, offset: int, timestamp_ms: float | None) -> None:
        """A record was read (records of a partition arrive in offset order; an offset at or
        below the last one means the partition is read again, so what was kept is dropped)."""
        ts = timestamp_ms if timestamp_ms is not None and timestamp_ms > 0 else self._now_ms()
        key = (topic, partition)
        with self._lock:
            q = self._pending.get(key)
            if q is None:
                q = self._pending[key] = deque()
            elif q and offset <= q[-1][0]:
                q.clear()
            q.append((offset, ts))

    def committed(self, topic: str, partition: int, next_offset: int) -> None:
        """Every record of the partition below `next_offset` is finished and committed."""
        key = (topic, partition)
        with self._lock:
            q = self._pending.get(key)
            while q and q[0][0] < next_offset:
                self._last_done_ms[key] = q.popleft()[1]

    def committed_all(self) -> None:
        """Everything read so far is committed (the planner commits whole batches)."""
        with self._lock:
            for key, q in self._pending.items():
                if q:
                    self._last_done_ms[key] = q[-1][1]
                    q.clear()

    def behind(self, topic: str, partition: int, records: int) -> None:
        if not self.estimates_unread:
            return
        with self._lock:
            self._behind[(topic, partition)] = max(records, 0)

    def caught_up(self) -> None:
        """Nothing is left to read in any assigned partition."""
        with self._lock:
            self._behind.clear()

    def forget(self, topic: str, partition: int) -> None:
        """The partition is no longer this process's."""
        key = (topic, partition)
        with self._lock:
            self._pending.pop(key, None)
            self._last_done_ms.pop(key, None)
            self._behind.pop(key, None)

    def age_seconds(self) -> dict[tuple[str, int], float]:
        now = self._now_ms()
        out: dict[tuple[str, int], float] = {}
        with self._lock:
            for key in set(self._pending) | set(self._behind):
                q = self._pending.get(key)
                if q:
                    out[key] = max(now - q[0][1], 0.0) / 1000.0
                elif self._behind.get(key, 0) > 0 and key in self._last_done_ms:
                    out[key] = max(now - self._last_done_ms[key], 0.0) / 1000.0
                else:
                    out[key] = 0.0
        return out


class _ScrapeTimeCollector(Collector):
    """Gauges computed when /metrics is read: time lag and readiness."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "icareus_bridge_consumer_lag_seconds",
            "Age of the oldest record a consumer group has not finished, per topic and "
            "partition (0 when caught up).",
            labels=["group", "topic", "partition"],
        )
        for clock in list(self._metrics.lag_clocks.values()):
            for (topic, partition), age in sorted(clock.age_seconds().items()):
                lag.add_metric([clock.group, topic, str(partition)], age)
        yield lag
        checks = self._metrics.readiness_checks
        if checks is not None:
            snapshot = checks()
            ready = GaugeMetricFamily(
                "icareus_bridge_ready",
                "1 when every readiness check passes (what /readyz answers 200 for), else 0.",
            )
            ready.add_metric([], 1.0 if snapshot and all(snapshot.values()) else 0.0)
            yield ready
            per_check = GaugeMetricFamily(
                "icareus_bridge_readiness_check",
                "1 when this readiness check passes (planner, dispatcher, icareus), else 0.",
                labels=["check"],
            )
            for name, ok in sorted(snapshot.items()):
                per_check.add_metric([name], 1.0 if ok else 0.0)
            yield per_check

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    """One registry holding every bridge metric; attribute names say what is counted."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.lag_clocks: dict[str, LagClock] = {}
        self.readiness_checks: Callable[[], dict[str, bool]] | None = None
        # --- process -----------------------------------------------------------------------
        self.build_info = Info(
            "icareus_bridge_build",
            "Version of the running bridge (value 1; the labels carry the information).",
            registry=r,
        )
        self.build_info.info({"version": __version__, "python_version": platform.python_version()})
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open fds
        PlatformCollector(registry=r)  # python_info
        self._planner_metrics(r)
        self._dispatcher_metrics(r)
        self._shared_metrics(r)
        r.register(_ScrapeTimeCollector(self))
        self._initialise_known_series()

    def _planner_metrics(self, r: CollectorRegistry) -> None:
        """The planner's metrics (and the transactions and state of both stages)."""
        # --- planner ---------------------------------------------------------------------
        self.events = Counter(
            "icareus_bridge_events",
            "Lifecycle events read by the planner, by action code and outcome "
            "(planned, skipped, dead_lettered).",
            ["action", "outcome"],
            registry=r,
        )
        self.requests_planned = Counter(
            "icareus_bridge_requests_planned",
            "Provisioning requests planned, by request type.",
            ["type"],
            registry=r,
        )
        self.rejections_planned = Counter(
            "icareus_bridge_rejections_planned",
            "Rejections decided by the planner (nothing sent), by request type and code.",
            ["type", "code"],
            registry=r,
        )
        self.feedback = Counter(
            "icareus_bridge_feedback",
            "Results folded into the planner's state, by request type and state "
            "(outcome: applied, ignored, unknown_subscription).",
            ["type", "state", "outcome"],
            registry=r,
        )
        self.transactions = Counter(
            "icareus_bridge_transactions",
            "Kafka transactions, by role and outcome (committed, aborted, fatal).",
            ["role", "outcome"],
            registry=r,
        )
        self.transaction_events = Histogram(
            "icareus_bridge_transaction_records",
            "Input records (events and results) per committed transaction.",
            ["role"],
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "icareus_bridge_transaction_commit_seconds",
            "Time to commit one transaction (offsets + commit), by role.",
            ["role"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.state_restore_seconds = Gauge(
            "icareus_bridge_state_restore_seconds",
            "Duration of the last restore of one state partition from its changelog.",
            ["partition"],
            registry=r,
        )
        self.state_restore_records = Gauge(
            "icareus_bridge_state_restore_records",
            "Changelog records read by the last restore of one state partition.",
            ["partition"],
            registry=r,
        )
        self.state_subscriptions = Gauge(
            "icareus_bridge_state_subscriptions",
            "Subscriptions held in the local state store (all assigned partitions).",
            registry=r,
        )

    def _dispatcher_metrics(self, r: CollectorRegistry) -> None:
        """The dispatcher's metrics: results, Icareus calls, parking, latency."""
        # --- dispatcher ------------------------------------------------------------------
        self.results = Counter(
            "icareus_bridge_results",
            "Results produced, by request type and life cycle state.",
            ["type", "state"],
            registry=r,
        )
        self.icareus_call_seconds = Histogram(
            "icareus_bridge_icareus_call_seconds",
            "Latency of one Icareus Suite API call, by request type.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.icareus_calls = Counter(
            "icareus_bridge_icareus_calls",
            "Icareus calls by request type and final outcome: ok, permanent (refused by "
            "Icareus, not retried), transient (the retry budget ran out).",
            ["type", "outcome"],
            registry=r,
        )
        self.icareus_refusals = Counter(
            "icareus_bridge_icareus_refusals",
            "Icareus refusals (permanent errors), by request type and Icareus error code.",
            ["type", "code"],
            registry=r,
        )
        self.retries = Counter(
            "icareus_bridge_retries",
            "Icareus calls retried, by reason (connect, timeout, reset, throttled, "
            "server_error, bad_body, auth, tls).",
            ["reason"],
            registry=r,
        )
        # No labels, so it is exported as 0 from the start and an alert on its rate works.
        self.icareus_auth_failures = Counter(
            "icareus_bridge_icareus_auth_failures",
            "Icareus calls refused for the bridge's own credentials (INVALID_TOKEN: wrong "
            "organization key or id, or clock skew; HTTP 401/403), every attempt counted.",
            registry=r,
        )
        # Also without labels, for the same reason.
        self.icareus_tls_failures = Counter(
            "icareus_bridge_icareus_tls_failures",
            "Icareus calls whose TLS link the bridge could not authenticate (Icareus' "
            "certificate not verified against icareus.ca_file, or the handshake refused), "
            "every attempt counted.",
            registry=r,
        )
        self.parked_keys = Gauge(
            "icareus_bridge_parked_keys",
            "Subscription keys currently parked behind a dead-lettered request.",
            registry=r,
        )
        self.in_flight_requests = Gauge(
            "icareus_bridge_in_flight_requests",
            "Requests handed to Icareus and not finished yet.",
            registry=r,
        )
        self.event_to_result_seconds = Histogram(
            "icareus_bridge_event_to_result_seconds",
            "Time from the CRM event (occurred_at) to its request's result.",
            ["type"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        # What CRM sees: the result readable by a read_committed consumer of the results topic.
        self.event_to_committed_result_seconds = Histogram(
            "icareus_bridge_event_to_committed_result_seconds",
            "Time from the CRM event (occurred_at) to its request's result committed (visible "
            "to CRM's read_committed consumer), by request type.",
            ["type"],
            buckets=_COMMITTED_BUCKETS,
            registry=r,
        )

    def _shared_metrics(self, r: CollectorRegistry) -> None:
        """Metrics both stages update."""
        # --- shared ----------------------------------------------------------------------
        self.dead_letters = Counter(
            "icareus_bridge_dead_letters",
            "Records sent to the dead-letter topic, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "icareus_bridge_consumer_lag",
            "Records behind the end of a partition, per consumer group, topic and partition.",
            ["group", "topic", "partition"],
            registry=r,
        )

    def _initialise_known_series(self) -> None:
        types = [t.value for t in RequestType]
        for action in [a.value for a in ActionCode] + ["UNKNOWN"]:
            for outcome in EVENT_OUTCOMES:
                self.events.labels(action, outcome)
        for t in types:
            self.requests_planned.labels(t)
            self.icareus_call_seconds.labels(t)
            self.event_to_result_seconds.labels(t)
            self.event_to_committed_result_seconds.labels(t)
            for code in RejectionCode:
                self.rejections_planned.labels(t, code.value)
            for state in FINISHED_STATES:
                self.results.labels(t, state)
                for fb in FEEDBACK_OUTCOMES:
                    self.feedback.labels(t, state, fb)
            for call_outcome in CALL_OUTCOMES:
                self.icareus_calls.labels(t, call_outcome)
        for role in ROLES:
            self.transaction_events.labels(role)
            self.transaction_seconds.labels(role)
            for tx in TRANSACTION_OUTCOMES:
                self.transactions.labels(role, tx)
        for reason in get_args(TransientReason):
            self.retries.labels(reason)
        for stage, dl_reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(stage, dl_reason)

    def lag_clock(self, group: str, *, estimates_unread: bool = False) -> LagClock:
        """The time-lag bookkeeping of one consumer group (created on first use)."""
        clock = self.lag_clocks.get(group)
        if clock is None:
            clock = self.lag_clocks[group] = LagClock(group, estimates_unread=estimates_unread)
        return clock

    def watch_readiness(self, checks: Callable[[], dict[str, bool]]) -> None:
        """Export `icareus_bridge_ready` and one gauge per check from `checks()` at scrape."""
        self.readiness_checks = checks

    def set_consumer_lag(self, group: str, topic: str, partition: int, lag: int) -> None:
        """Records between a consumer's position and the end of its partition."""
        self.consumer_lag.labels(group, topic, str(partition)).set(max(lag, 0))
        self.lag_clock(group).behind(topic, partition, lag)

    def forget_partition(self, group: str, topic: str, partition: int) -> None:
        """A partition left this process: its lag series go (the new owner reports them)."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(group, topic, str(partition))
        self.lag_clock(group).forget(topic, partition)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


__all__ = ["DEAD_LETTER_REASONS", "LagClock", "Metrics"]
