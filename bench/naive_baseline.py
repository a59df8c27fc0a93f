"""The naive dispatcher the end-to-end benchmark compares the bridge with: one consumer that takes
one provisioning request, calls Icareus, produces its result, commits, and only then takes the
next. Correct (in order, at-least-once, idempotency keys) and as simple as it gets; its speed is
bounded by one Icareus round trip plus one produce and one commit per request.

    python bench/naive_baseline.py --bootstrap HOST:PORT --base-url URL \
        --requests-topic T --results-topic T [--group G] [--config PATH]

Runs until SIGTERM/SIGINT; prints the number of requests it finished when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from icareus_bridge.codec import Codec
from icareus_bridge.config import load_settings
from icareus_bridge.core.model import RequestType
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.errors import PermanentIcareusError
from icareus_bridge.pipeline import outcomes

ROOT = Path(__file__).resolve().parents[1]


async def run(args: argparse.Namespace, stop: asyncio.Event) -> int:
    settings = load_settings(args.config)
    icareus = settings.icareus.model_copy(update={"base_url": args.base_url})
    codec = Codec()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    consumer.subscribe([args.requests_topic])
    user_ids: dict[str, str] = {}  # account key -> Icareus user id
    finished = 0
    async with IcareusClient(icareus) as client:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            await asyncio.sleep(0)  # let a signal handler run
            if msg is None or msg.error() or msg.value() is None:
                continue
            value = msg.value()
            assert value is not None
            request = codec.decode_request(value)
            user_id = request.user_id or user_ids.get(request.account_key)
            if user_id is None and request.type is not RequestType.ADD_USER:
                found = await client.get_user(external_id=request.account_key)
                user_id = found.user.user_id if found.user is not None else None
            now_ms = int(time.time() * 1000)
            try:
                call = await client.send(request, user_id=user_id)
                if request.type is RequestType.ADD_USER and call.user_id:
                    user_ids[request.account_key] = call.user_id
                result = outcomes.completed(request, call, user_id, int(time.time() * 1000))
            except PermanentIcareusError as exc:
                result = outcomes.rejected_by_icareus(request, exc, user_id, now_ms)
            producer.produce(args.results_topic, key=msg.key(), value=codec.encode_result(result))
            producer.flush()
            consumer.commit(message=msg, asynchronous=False)
            finished += 1
    consumer.close()
    return finished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--base-url", required=True, help="Icareus API base URL")
    parser.add_argument("--requests-topic", required=True)
    parser.add_argument("--results-topic", required=True)
    parser.add_argument("--group", default="icareus-naive-dispatcher")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "bridge.yaml")
    args = parser.parse_args(argv)

    async def body() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(args, stop)

    finished = asyncio.run(body())
    print(f"naive baseline: {finished} requests finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
