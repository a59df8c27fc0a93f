"""Hostile input through the planner's whole step (`PlannerLogic`: decode, validate, state
lookup, plan, encode of every output and of the new state as the commit would), without Kafka.

Inputs, from one seeded generator (the same seed gives the same inputs):
- `random`: random bytes, bare or behind the event schema's single-object header;
- `mutated`: valid events (and results, for the feedback path) with 1-4 byte edits;
- `monster`: schema-valid events at the extremes: strings of up to a few MB, thousands of
  services or installed items, longs at the ends of 64 bits, empty and duplicate values.

Each input must come out planned (requests and rejections that decode again, a state that
encodes and decodes), skipped with a reason, or dead-lettered with a reason and its bytes
untouched. Anything else (an exception, a wrong shape) is a failure: the input is kept.

`python -m tests.fuzz.hostile --inputs 1000000 --seed 1` is the long run of `make drills`.
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from icareus_bridge.codec import EVENT, Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import ActionCode, LifeCycleState, ServiceState, SubscriptionState
from icareus_bridge.core.plan import plan
from icareus_bridge.kafka.consumer import ConsumedRecord
from icareus_bridge.pipeline.planner import Handled, PlannerLogic
from tests.fuzz.avro_reference import LONG_MAX, LONG_MIN, mutate, random_long, random_text

DISTRIBUTORS = ["ICAREUS-VP1", "ICAREUS-VP2", "ICAREUS-VP3"]
PRODUCTS = {"BASIC-TV": "1001", "SPORTS": "1002", "MOVIES": "1003"}
GOODS = {"STB-4K": "SET_TOP_BOX", "SMARTCARD": "SMART_CARD"}
SETTINGS = Settings(
    icareus={"key": "fuzz-key"},
    provider={
        "effective": True,
        "max_viewing_points": 2,
        "distributors": [{"code": d} for d in DISTRIBUTORS],
        "service_mapping": PRODUCTS,
        "physical_goods_mapping": GOODS,
    },
)
ACTIONS = [a.value for a in ActionCode]
SUB_STATES = [s.value for s in SubscriptionState]
SERVICE_STATES = [s.value for s in ServiceState]
KINDS = ("random", "mutated", "monster")
STORE_LIMIT = 2000  # subscriptions kept for state lookups (monsters are never kept)


class HostileFailure(AssertionError):
    """An input the planner step did not turn into a plan, a skip or a dead letter."""

    def __init__(self, kind: str, index: int, data: bytes | None, problem: str) -> None:
        shown = (data or b"")[:120].hex()
        super().__init__(f"{kind} input #{index} ({len(data or b'')} bytes, {shown}...): {problem}")
        self.data = data


# --- generating -------------------------------------------------------------------------------


def _text(rng: random.Random, options: list[str], odd: float = 0.1) -> str:
    return random_text(rng, 20) if rng.random() < odd else rng.choice(options)


def event_dict(rng: random.Random, sub_id: str, version: int, *, size: int = 4) -> dict[str, Any]:
    """A schema-valid event (the Avro record as a dict), mostly sensible, sometimes odd."""

    def maybe(value: str) -> str | None:
        return None if rng.random() < 0.3 else value

    services = [
        {
            "id": f"svc-{rng.randrange(size + 2)}",
            "product_code": _text(rng, [*PRODUCTS, "GOLF"]),
            "state": rng.choice(SERVICE_STATES),
            "distributor": rng.choice([*DISTRIBUTORS, None, "OTHER-VP"]),
        }
        for _ in range(rng.randrange(size + 1))
    ]
    items = [
        {
            "id": f"item-{rng.randrange(size + 2)}",
            "serial_number": _text(rng, [f"SN-{rng.randrange(6)}", ""], 0.05),
            "physical_good_code": _text(rng, [*GOODS, "ROUTER"]),
            "distributor": rng.choice([*DISTRIBUTORS, None]),
        }
        for _ in range(rng.randrange(size + 1))
    ]
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "occurred_at": 1_790_000_000_000 + rng.randrange(10**9)
        if rng.random() < 0.9
        else random_long(rng),
        "action": {
            "code": rng.choice(ACTIONS) if rng.random() < 0.95 else random_text(rng, 30),
            "classification": rng.choice([None, None, "UPGRADE", random_text(rng, 10)]),
        },
        "subscription": {
            "id": sub_id,
            "number": rng.choice([f"N-{sub_id}", f"N-{sub_id}", "", random_text(rng, 12)]),
            "version": version,
            "state": rng.choice(SUB_STATES),
            "subscriber": {
                "account_number": f"A-{sub_id}",
                "first_name": random_text(rng, 20),
                "last_name": random_text(rng, 20),
                "email": maybe("x@example.org"),
                "phone": maybe("+35799000000"),
                "country_code": maybe("CY"),
                "postal_code": maybe(random_text(rng, 8)),
                "city": maybe(random_text(rng, 12)),
            },
            "services": services,
            "installed_items": items,
        },
    }


def monster_dict(rng: random.Random, sub_id: str, *, scale: int) -> dict[str, Any]:
    """A schema-valid event at an extreme; `scale` bounds sizes (1: the normal suite)."""
    ev = event_dict(rng, sub_id, rng.choice([1, LONG_MAX, LONG_MIN, 0, -1]))
    sub = ev["subscription"]
    pick = rng.randrange(6)
    if pick == 0:  # a huge string in a random place
        huge = rng.choice("xÄ🙂") * rng.randrange(10_000, 60_000 * scale)
        where = rng.choice(["first_name", "number", "id", "product", "serial", "code"])
        if where == "first_name":
            sub["subscriber"]["first_name"] = huge
        elif where == "number":
            sub["number"] = huge
        elif where == "id":
            sub["id"] = huge
        elif where == "code":
            ev["action"]["code"] = huge
        elif where == "product" and sub["services"]:
            sub["services"][0]["product_code"] = huge
        elif sub["installed_items"]:
            sub["installed_items"][0]["serial_number"] = huge
    elif pick == 1:  # thousands of services
        n = rng.randrange(500, 1500 * scale)
        sub["services"] = [
            {
                "id": f"s{i}",
                "product_code": rng.choice(list(PRODUCTS)),
                "state": "EFFECTIVE",
                "distributor": rng.choice(DISTRIBUTORS),
            }
            for i in range(n)
        ]
    elif pick == 2:  # thousands of installed items, serials partly duplicated
        n = rng.randrange(500, 1500 * scale)
        sub["installed_items"] = [
            {
                "id": f"i{i}",
                "serial_number": f"SN{rng.randrange(n)}",
                "physical_good_code": "STB-4K",
                "distributor": rng.choice(DISTRIBUTORS),
            }
            for i in range(n)
        ]
    elif pick == 3:  # the ends of 64 bits everywhere
        ev["occurred_at"] = rng.choice([LONG_MAX, LONG_MIN])
        sub["version"] = rng.choice([LONG_MAX, LONG_MIN, LONG_MAX - 1])
    elif pick == 4:  # empty everything
        sub["number"] = ""
        for s in sub["services"]:
            s["product_code"] = s["id"] = ""
        for i in sub["installed_items"]:
            i["serial_number"] = i["id"] = ""
    else:  # one serial in every room
        sub["installed_items"] = [
            {
                "id": f"i{d}",
                "serial_number": "SN-SAME",
                "physical_good_code": "STB-4K",
                "distributor": d,
            }
            for d in DISTRIBUTORS
        ]
    return ev


@dataclass
class Hostile:
    """The seeded input source and the planner step it drives."""

    seed: int
    scale: int = 1
    codec: Codec = field(default_factory=Codec)
    counts: Counter[str] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.logic = PlannerLogic(SETTINGS, self.codec, plan, apply_result, clock_ms=lambda: 1)
        self.store: dict[bytes, Any] = {}
        self.versions: dict[str, int] = {}
        self.header = self.codec._headers[EVENT]
        self.results: list[bytes] = []  # encoded results of earlier plans, to mutate

    def _sub(self) -> tuple[str, int]:
        sub_id = f"sub-{self.rng.randrange(200)}"
        version = self.versions.get(sub_id, 0) + self.rng.choice([1, 1, 1, 0, -1, 5])
        self.versions[sub_id] = max(version, self.versions.get(sub_id, 0))
        return sub_id, version

    def make(self, index: int) -> tuple[str, ConsumedRecord]:
        rng = self.rng
        kind = KINDS[0] if index % 10 == 0 else KINDS[2] if index % 50 == 7 else KINDS[1]
        topic = SETTINGS.topics.input
        if kind == "random":
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(120)))
            data = self.header + body if rng.random() < 0.7 else body
            key: bytes | None = f"sub-{rng.randrange(200)}".encode()
        elif kind == "monster":
            ev = monster_dict(rng, f"monster-{index}", scale=self.scale)
            data = self.codec.encode(EVENT, ev)
            key = ev["subscription"]["id"].encode()
        elif self.results and rng.random() < 0.1:
            topic = SETTINGS.topics.results
            data = mutate(rng.choice(self.results), rng, keep=10 if rng.random() < 0.8 else 0)
            key = None
        else:
            sub_id, version = self._sub()
            data = self.codec.encode(EVENT, event_dict(rng, sub_id, version))
            if rng.random() < 0.7:
                data = mutate(data, rng, keep=10 if rng.random() < 0.9 else 0)
            key = sub_id.encode() if rng.random() < 0.97 else rng.choice([None, b"other"])
        return kind, ConsumedRecord(topic, 0, index, key, data, timestamp_ms=1_790_000_000_000)

    # --- the step and its check ---------------------------------------------------------------

    def _lookup(self, _partition: int, key: bytes) -> Any:
        return self.store.get(key)

    def step(self, kind: str, index: int, rec: ConsumedRecord) -> str:
        try:
            if rec.topic == SETTINGS.topics.results:
                h = self.logic.on_result(rec, self._lookup, lambda _k: None)
            else:
                h = self.logic.on_event(rec, self._lookup)
            return self._check(kind, rec, h)
        except HostileFailure:
            raise
        except Exception as exc:
            raise HostileFailure(kind, index, rec.value, f"raised {exc!r}") from exc

    def _check(self, kind: str, rec: ConsumedRecord, h: Handled) -> str:
        t = SETTINGS.topics
        if h.outcome == "dead_lettered":
            assert h.dead_letter is not None and h.dead_letter[1], "dead letter without reason"
            [dead] = h.outputs
            assert dead.topic == t.dlq and dead.value == rec.value and dead.key == rec.key
            headers = dict(dead.headers or [])
            assert headers["dlq.reason"].decode() == h.dead_letter[1]
            return f"dead_lettered:{h.dead_letter[0]}:{h.dead_letter[1]}"
        if h.outcome == "skipped":
            assert h.skip_reason and not h.outputs, "skipped without reason, or with output"
            return f"skipped:{h.skip_reason}"
        if h.outcome.startswith("feedback_"):
            return h.outcome
        assert h.outcome == "planned", f"outcome {h.outcome}"
        for out in h.outputs:
            assert out.value is not None
            if out.topic == t.requests and out.value is not rec.value:
                self.codec.decode_request(out.value)
            elif out.topic == t.results:
                result = self.codec.decode_result(out.value)
                assert result.life_cycle_state is LifeCycleState.REJECTED
                if len(self.results) < 500:
                    self.results.append(out.value)
        assert h.state is not None
        state_bytes = self.codec.encode_state(h.state.record)  # as the commit does
        assert self.codec.decode_state(state_bytes) == h.state.record
        if kind != "monster":
            if len(self.store) >= STORE_LIMIT:
                self.store.clear()
            self.store[h.state.key] = h.state.record
        return "planned"

    def run(
        self, inputs: int, *, watchdog: float | None = None, progress: int = 0
    ) -> dict[str, Any]:
        """Run `inputs` inputs; the counts by kind and outcome, and the durations. `progress`:
        a line on stderr every that many inputs."""
        started = time.perf_counter()
        by_kind: Counter[str] = Counter()
        for index in range(inputs):
            if progress and index and index % progress == 0:
                seconds = time.perf_counter() - started
                print(f"{index} inputs, {seconds:.0f} s", file=sys.stderr, flush=True)
            kind, rec = self.make(index)
            if watchdog is not None:  # a hang ends the run with every thread's traceback
                faulthandler.dump_traceback_later(watchdog, exit=True)
            t0 = time.perf_counter()
            outcome = self.step(kind, index, rec)
            took = time.perf_counter() - t0
            if took > self.slowest[0]:
                self.slowest = (took, f"{kind} #{index} ({len(rec.value or b'')} bytes)")
            by_kind[kind] += 1
            self.counts[f"{kind} -> {outcome}"] += 1
        if watchdog is not None:
            faulthandler.cancel_dump_traceback_later()
        return {
            "inputs": inputs,
            "seconds": time.perf_counter() - started,
            "by_kind": dict(by_kind),
            "slowest": self.slowest,
        }


def summary(h: Hostile, report: dict[str, Any]) -> str:
    lines = [
        f"hostile input: {report['inputs']} inputs, seed {h.seed}, scale {h.scale}, "
        f"{report['seconds']:.1f} s",
        "by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(report["by_kind"].items())),
        f"slowest input: {report['slowest'][0] * 1000:.0f} ms, {report['slowest'][1]}",
    ]
    for key, n in sorted(h.counts.items()):
        lines.append(f"  {n:>9}  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=int, default=10, help="monster size factor")
    parser.add_argument("--watchdog", type=float, default=120.0, help="seconds per input")
    args = parser.parse_args(argv)
    h = Hostile(args.seed, scale=args.scale)
    try:
        report = h.run(args.inputs, watchdog=args.watchdog, progress=100_000)
    except HostileFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(summary(h, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
