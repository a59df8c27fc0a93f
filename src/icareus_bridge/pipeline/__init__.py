"""The running stages between the codec and Kafka: the planner (events to requests) and the
dispatcher (requests to Icareus calls and results), each a logic unit in a thin shell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from icareus_bridge.lazy import exports

if TYPE_CHECKING:
    from icareus_bridge.pipeline.dead_letter import (
        iso_millis,
        parse_dead_letter_headers,
        parse_iso_millis,
        refused_dead_letter,
    )
    from icareus_bridge.pipeline.dispatch_logic import DispatchLogic
    from icareus_bridge.pipeline.dispatcher import Dispatcher, run_dispatcher
    from icareus_bridge.pipeline.parking import (
        ParkedKey,
        decode_marker,
        is_parked_marker,
        marker_key,
    )
    from icareus_bridge.pipeline.planner import Planner, PlannerLogic

# Imported on first use, so importing the package loads none of its modules.
_EXPORTS: dict[str, str] = {
    "DispatchLogic": "icareus_bridge.pipeline.dispatch_logic",
    "Dispatcher": "icareus_bridge.pipeline.dispatcher",
    "ParkedKey": "icareus_bridge.pipeline.parking",
    "Planner": "icareus_bridge.pipeline.planner",
    "PlannerLogic": "icareus_bridge.pipeline.planner",
    "decode_marker": "icareus_bridge.pipeline.parking",
    "is_parked_marker": "icareus_bridge.pipeline.parking",
    "iso_millis": "icareus_bridge.pipeline.dead_letter",
    "marker_key": "icareus_bridge.pipeline.parking",
    "parse_dead_letter_headers": "icareus_bridge.pipeline.dead_letter",
    "parse_iso_millis": "icareus_bridge.pipeline.dead_letter",
    "refused_dead_letter": "icareus_bridge.pipeline.dead_letter",
    "run_dispatcher": "icareus_bridge.pipeline.dispatcher",
}

__all__ = [
    "DispatchLogic",
    "Dispatcher",
    "ParkedKey",
    "Planner",
    "PlannerLogic",
    "decode_marker",
    "is_parked_marker",
    "iso_millis",
    "marker_key",
    "parse_dead_letter_headers",
    "parse_iso_millis",
    "refused_dead_letter",
    "run_dispatcher",
]

__getattr__ = exports(__name__, _EXPORTS)
