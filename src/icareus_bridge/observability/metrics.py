"""Every Prometheus metric of ARCHITECTURE.md's Observability list, in one registry per process.

The planner and the dispatcher receive the same `Metrics` object and update the metrics that
are theirs; `/metrics` renders the registry. No module-level globals: tests build their own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """One registry holding every bridge metric; attribute names say what is counted."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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
        self.retries = Counter(
            "icareus_bridge_retries",
            "Icareus calls retried, by reason (timeout, connect, http_429, http_5xx, ...).",
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

    def set_consumer_lag(self, group: str, topic: str, partition: int, lag: int) -> None:
        """Records between a consumer's position and the end of its partition."""
        self.consumer_lag.labels(group, topic, str(partition)).set(max(lag, 0))

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
