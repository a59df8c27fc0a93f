"""What the planner and the dispatcher share as Kafka stages: the instance id that names their
`group.instance.id` and `transactional.id` (kafka/identity.py claims it on this host), and the
millisecond wall clock that stamps what they produce (results, dead letters, parked keys)."""

from __future__ import annotations

import time
from typing import Literal

from icareus_bridge.config import Settings
from icareus_bridge.kafka.identity import resolve_instance_id

Role = Literal["planner", "dispatcher"]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the stages' default clock)."""
    return int(time.time() * 1000)


def instance_id(settings: Settings, role: Role) -> str:
    """`<role>.instance_id` of the configuration, else the host name."""
    section = settings.planner if role == "planner" else settings.dispatcher
    return resolve_instance_id(section.instance_id)


__all__ = ["Role", "instance_id", "now_ms"]
