"""Observability shared by both pipeline stages: Prometheus metrics, structured logs with
redaction, and the small HTTP server behind /metrics, /healthz and /readyz."""

from icareus_bridge.observability.http import HealthServer, Readiness
from icareus_bridge.observability.logging import (
    RateLimiter,
    configure_logging,
    get_logger,
    redact,
    request_fields,
)
from icareus_bridge.observability.metrics import Metrics

__all__ = [
    "HealthServer",
    "Metrics",
    "RateLimiter",
    "Readiness",
    "configure_logging",
    "get_logger",
    "redact",
    "request_fields",
]
