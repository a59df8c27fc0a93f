"""Structured JSON logs for every role, declared once: structlog processors, one of which drops
personal data and secrets wherever they appear, so call sites can pass domain objects freely.

Log records carry `event_id`, `request_id` and `subscription_id` as plain keys (bind them with
`log.bind(...)` or pass them per call)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from pydantic import BaseModel

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
REDACTED = "[redacted]"


def _is_sensitive(key: str) -> bool:
    k = key.lower()
    if k in _ALLOWED_KEYS:
        return False
    if k in REDACTED_KEYS:
        return True
    parts = k.replace(".", "_").replace("-", "_").split("_")
    return any(p in REDACTED_KEYS for p in parts if p)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` with sensitive keys' values replaced, recursing into mappings/lists;
    a pydantic model (a domain object) is redacted as its `model_dump`, never shown whole."""
    if _depth > 8:  # too deep to look through: not shown at all
        return REDACTED if isinstance(value, Mapping | list | tuple | BaseModel) else value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _is_sensitive(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, _depth + 1) for v in value]
    return value


def redaction_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: personal data and secrets never reach the output."""
    for k in list(event_dict.keys()):
        if k == "event":
            continue
        if _is_sensitive(k):
            event_dict[k] = REDACTED
        elif isinstance(event_dict[k], Mapping | list | tuple | BaseModel):
            event_dict[k] = redact(event_dict[k])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib root logger it writes through) for the process."""
    out = stream if stream is not None else sys.stderr
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
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


def get_logger(name: str) -> Any:
    """A structlog logger carrying `logger=<name>`."""
    return structlog.get_logger(name).bind(logger=name)
