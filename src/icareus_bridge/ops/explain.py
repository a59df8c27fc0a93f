"""`icareus-bridge explain`: a dry run of the state machine on one event given as JSON. Reads the
event (and optionally the state an earlier explain printed), plans, prints JSON, sends nothing.
The subscriber's personal data is shown redacted: the output is for terminals and tickets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from icareus_bridge.codec import DecodeError, default_codec, validate_event_json
from icareus_bridge.codec.errors import field_problems
from icareus_bridge.config import load_settings
from icareus_bridge.core.model import Decision, ModelError, SubscriptionRecord
from icareus_bridge.core.plan import plan
from icareus_bridge.core.redaction import redact
from icareus_bridge.core.validation import check_event, check_event_size, check_state_of

EXIT_OK = 0
EXIT_BAD_INPUT = 2

# The subscriber's personal data, in an ADD_USER's params and in the state's snapshot. Shown as
# REDACTED; the state still plans the next step (`plan` reads the profile from the event only).
PERSONAL_FIELDS = ("first_name", "last_name", "email", "phone", "postal_code", "city")


def _redacted(fields: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = redact(fields, PERSONAL_FIELDS.__contains__, keep_empty=True)
    return shown


def render(decision: Decision) -> dict[str, Any]:
    """The explain output: requests in plan order, rejections, and the state after the plan
    (assuming every request completes) — the object `--state` accepts for the next step."""
    return {
        "requests": [
            {
                "type": r.type.value,
                "distributor": r.distributor,
                "account_key": r.account_key,
                "params": _redacted(r.params()),
            }
            for r in decision.requests
        ],
        "rejections": [
            {"code": j.code.value, "distributor": j.distributor, "detail": j.detail}
            for j in decision.rejections
        ],
        "state": _redacted_state(decision.state.model_dump(mode="json")),
    }


def _redacted_state(state: dict[str, Any]) -> dict[str, Any]:
    snapshot = state.get("snapshot")
    if isinstance(snapshot, dict) and isinstance(snapshot.get("subscriber"), dict):
        subscriber = _redacted(snapshot["subscriber"])
        state = {**state, "snapshot": {**snapshot, "subscriber": subscriber}}
    return state


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _BadInput(f"--{what}: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise _BadInput(
            f"--{what}: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); give the JSON as UTF-8"
        ) from exc


class _BadInput(Exception):
    pass


def _load_state(path: Path) -> SubscriptionRecord:
    text = _read(path, "state")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadInput(f"--state: {path} is not valid JSON: {exc}") from exc
    # Accept a whole earlier explain output as well as its "state" object.
    if isinstance(raw, dict) and "state" in raw and "requests" in raw:
        raw = raw["state"]
    try:
        return SubscriptionRecord.model_validate(raw)
    except ModelError as exc:
        first = field_problems(exc)[0]
        raise _BadInput(f"--state: {path}: field {first.field}: {first.message}") from exc


def explain(event_text: str, state: SubscriptionRecord | None, config: Path | None) -> Decision:
    """Validate the event as the planner does (DecodeError naming the field if it breaks the
    schema or a rule of core/validation.py, `limits` included) and plan it. The size limit
    applies to the event's Avro encoding, the bytes the planner would read."""
    settings = load_settings(config)
    event = check_event(validate_event_json(event_text), settings.limits)
    check_event_size(len(default_codec().encode_event(event)), settings.limits)
    if state is not None:
        try:
            check_state_of(state, event)
        except DecodeError as exc:
            raise _BadInput(f"--state: {exc}") from exc
    return plan(state, event, settings.provider)


def main(args: argparse.Namespace) -> int:
    try:
        event_text = _read(args.event, "event")
        state = _load_state(args.state) if args.state is not None else None
        decision = explain(event_text, state, args.config)
    except _BadInput as exc:
        print(f"icareus-bridge explain: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DecodeError as exc:
        # An INVALID message starts with the dotted field path already.
        where = "field " if exc.field else ""
        print(f"icareus-bridge explain: --event {args.event}: {where}{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if decision.skipped is not None:
        print(
            f"icareus-bridge explain: event skipped ({decision.skipped.value}): nothing planned",
            file=sys.stderr,
        )
    json.dump(render(decision), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


__all__ = ["explain", "main", "render"]
