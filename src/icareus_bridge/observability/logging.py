"""Structured JSON logs for every role, declared once: structlog processors, one of which drops
personal data and secrets wherever they appear, so call sites can pass domain objects freely.

Log records of the per-request path carry `event_id`, `request_id`, `subscription_id`,
`action_code`, `request_type` and `outcome` as plain keys where known (`request_fields` builds
them from a request, result or event). Format `auto` renders for people when the log stream
is a terminal and JSON otherwise. librdkafka's lines are rate-limited per facility: a broker
outage otherwise logs a line per reconnect attempt."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from icareus_bridge.core.redaction import CONTAINERS, REDACTED
from icareus_bridge.core.redaction import redact as redact_with

# Keys whose values are personal data or secrets; matched case-insensitively on the whole key
# and on any `_`/`.`/`-` separated part of it ("icareus_key", "sasl.password").
REDACTED_KEYS = frozenset(
    {
        "first_name",
        "firstname",
        "last_name",
        "lastname",
        "email",
        "emailaddress",
        "email_address",
        "phone",
        "phonenumber",
        "phone_number",
        "postal_code",
        "postalcode",
        "city",
        "cityname",
        "city_name",
        "address",
        "profile",
        "subscriber",
        "key",
        "secret",
        "token",
        "password",
        "authorization",
        "api_key",
        "sasl.password",
    }
)
# Keys that contain a redacted word but are not secrets (they name Kafka keys or ids).
_ALLOWED_KEYS = frozenset({"account_key", "key_hash", "idempotency_key", "partition_key"})


def _is_sensitive(key: str) -> bool:
    k = key.lower()
    if k in _ALLOWED_KEYS:
        return False
    if k in REDACTED_KEYS:
        return True
    parts = k.replace(".", "_").replace("-", "_").split("_")
    return any(p in REDACTED_KEYS for p in parts if p)


def redact(value: Any) -> Any:
    """A copy of `value` with sensitive keys' values replaced, recursing into mappings/lists;
    a model (a domain object) is redacted as its fields, never shown whole; what
    lies deeper than 8 levels is not shown at all."""
    return redact_with(value, _is_sensitive, max_depth=8)


def redaction_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: personal data and secrets never reach the output."""
    for k in list(event_dict.keys()):
        if k == "event":
            continue
        if _is_sensitive(k):
            event_dict[k] = REDACTED
        elif isinstance(event_dict[k], CONTAINERS):
            event_dict[k] = redact(event_dict[k])
    return event_dict


def request_fields(obj: Any) -> dict[str, Any]:
    """`event_id`, `request_id`, `subscription_id`, `action_code` and `request_type` of a
    provisioning request or result, or of a lifecycle event (the ones it has)."""
    fields: dict[str, Any] = {}
    if hasattr(obj, "request_id"):  # a ProvisioningRequest or ProvisioningResult
        fields["event_id"] = obj.event_id
        fields["request_id"] = obj.request_id
        fields["subscription_id"] = obj.subscription_id
        fields["action_code"] = obj.action_code
        fields["request_type"] = getattr(obj.type, "value", obj.type)
    elif hasattr(obj, "subscription") and hasattr(obj, "action"):  # a LifecycleEvent
        fields["event_id"] = obj.event_id
        fields["subscription_id"] = obj.subscription.id
        fields["action_code"] = obj.action.code
    return fields


class RateLimiter:
    """Per key: at most `burst` passes per `interval_seconds`; `allow(key)` says whether this
    one passes and how many of that key were held back since the last that passed."""

    def __init__(
        self,
        burst: int = 5,
        interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, passed, held)

    def allow(self, key: str) -> tuple[bool, int]:
        now = self._clock()
        with self._lock:
            start, passed, held = self._windows.get(key, (now, 0, 0))
            if now - start >= self.interval:
                start, passed = now, 0
            if passed < self.burst:
                self._windows[key] = (start, passed + 1, 0)
                return True, held
            self._windows[key] = (start, passed, held + 1)
            return False, held + 1


class RateLimitFilter(logging.Filter):
    """A stdlib filter for librdkafka's records (`"%s [%s] %s"` with facility, client name,
    message): per facility and level a few lines per interval; the next line let through says
    how many were held back (`suppressed`)."""

    def __init__(self, burst: int = 5, interval_seconds: float = 60.0) -> None:
        super().__init__()
        self.limiter = RateLimiter(burst, interval_seconds)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        facility = str(args[0]) if isinstance(args, tuple) and args else record.getMessage()
        allowed, suppressed = self.limiter.allow(f"{record.levelno}:{facility}")
        if allowed and suppressed:
            record.suppressed = suppressed
        return allowed


LIBRDKAFKA_LOGGER_NAME = "icareus_bridge.kafka.librdkafka"


def _add_suppressed(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    suppressed = getattr(record, "suppressed", None)
    if suppressed:
        event_dict["suppressed"] = suppressed
    return event_dict


def resolve_format(fmt: str, stream: TextIO) -> str:
    """`auto`: `console` when `stream` is a terminal, else `json`."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    try:
        return "console" if isatty is not None and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib root logger it writes through) for the process.
    `fmt`: `json`, `console` (for people) or `auto` (console on a terminal, else JSON)."""
    out = stream if stream is not None else sys.stderr
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if resolve_format(fmt, out) == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redaction_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Records of the standard library (librdkafka through confluent-kafka's `logger` setting,
    # uvicorn, httpx) go through the same processors: one JSON stream, redacted alike.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redaction_processor,
                renderer,
            ],
            foreign_pre_chain=[
                _add_suppressed,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    librdkafka = logging.getLogger(LIBRDKAFKA_LOGGER_NAME)
    for old_filter in list(librdkafka.filters):
        if isinstance(old_filter, RateLimitFilter):
            librdkafka.removeFilter(old_filter)
    librdkafka.addFilter(RateLimitFilter())


def get_logger(name: str) -> Any:
    """A structlog logger carrying `logger=<name>`."""
    return structlog.get_logger(name).bind(logger=name)
