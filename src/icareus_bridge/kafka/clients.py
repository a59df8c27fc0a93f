"""Thin factories for the confluent-kafka clients the bridge uses, built from
`KafkaSettings.client_config()` plus the few settings each role's guarantees depend on.

Producers hash keys with murmur2 (`murmur2_random`), like Java clients, so a key lands in the
same partition number whichever client produced it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from icareus_bridge.config import KafkaSettings

ErrorCallback = Callable[[Any], None]

# librdkafka's own log lines go to this stdlib logger (and from there into the JSON stream)
# instead of raw lines on stderr; they are served by the clients' poll/consume calls.
LIBRDKAFKA_LOGGER = logging.getLogger("icareus_bridge.kafka.librdkafka")


def quiet_librdkafka() -> None:
    """For the operator commands: they report a Kafka error themselves, once, with the
    bootstrap address, instead of librdkafka's line per reconnect attempt."""
    LIBRDKAFKA_LOGGER.propagate = False
    LIBRDKAFKA_LOGGER.disabled = True


def base_config(kafka: KafkaSettings) -> dict[str, Any]:
    """`KafkaSettings.client_config()` plus the log routing every client of the bridge uses."""
    conf = kafka.client_config()
    conf.setdefault("logger", LIBRDKAFKA_LOGGER)
    return conf


class FatalClientError(Exception):
    """A Kafka client of a stage cannot go on (fenced by another process with the same ids, or
    another fatal error): the process must end. The message names the instance id and the
    setting that gives a process its own ids."""

    def __init__(self, role: str, instance: str, transactional_id: str, error: Any) -> None:
        super().__init__(
            f"{role} instance '{instance}' stopped on a fatal Kafka error: {error}. "
            f"Its ids are group.instance.id={role}-{instance} and "
            f"transactional.id={transactional_id}; a second process with the same "
            f"{role}.instance_id fences the first. Give each process its own "
            f"{role}.instance_id (ICAREUS_BRIDGE__{role.upper()}__INSTANCE_ID)."
        )
        self.role = role
        self.instance = instance


class PartitionLag(NamedTuple):
    topic: str
    partition: int
    lag: int


def consumer(
    kafka: KafkaSettings,
    group_id: str,
    *,
    instance_id: str | None = None,
    read_committed: bool = True,
    overrides: dict[str, Any] | None = None,
    error_cb: ErrorCallback | None = None,
) -> Consumer:
    """A group consumer that never commits by itself (offsets go through transactions or
    explicit commits). `instance_id` turns on static membership: a restarted process with
    the same id takes its partitions back at once instead of after the session timeout.

    Assignment is `range`: for topics with equal partition counts subscribed together, each
    member receives the same partition numbers of every topic (co-partitioning)."""
    conf: dict[str, Any] = base_config(kafka)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "partition.assignment.strategy": "range",
            "session.timeout.ms": 30000,
        }
    )
    if instance_id:
        conf["group.instance.id"] = instance_id
    if error_cb is not None:
        conf["error_cb"] = error_cb
    conf.update(overrides or {})
    return Consumer(conf)


def assign_only_consumer(
    kafka: KafkaSettings, *, read_committed: bool = True, overrides: dict[str, Any] | None = None
) -> Consumer:
    """A consumer for `assign()` reads (changelog restore, tools): no group membership,
    no offset commits, end-of-partition events on."""
    conf: dict[str, Any] = base_config(kafka)
    conf.update(
        {
            # librdkafka wants a group id even for assign(); it is never joined or committed.
            "group.id": f"{kafka.client_id}-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            # Bounded prefetch: restoring a million subscriptions must not hold hundreds of
            # MB of fetched-but-unread records (librdkafka's default is 100k per partition).
            "queued.min.messages": 20000,
            "queued.max.messages.kbytes": 32768,
            "fetch.max.bytes": 16777216,
            "max.partition.fetch.bytes": 4194304,
        }
    )
    conf.update(overrides or {})
    return Consumer(conf)


def _producer_conf(kafka: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = base_config(kafka)
    conf.update(
        {
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    return conf


def transactional_producer(
    kafka: KafkaSettings,
    transactional_id: str,
    *,
    init_timeout: float = 60.0,
    overrides: dict[str, Any] | None = None,
    error_cb: ErrorCallback | None = None,
) -> Producer:
    """A producer with `transactional.id` set and `init_transactions()` done: any earlier
    producer with the same id is fenced and its open transaction aborted."""
    conf = _producer_conf(kafka)
    conf["transactional.id"] = transactional_id
    if error_cb is not None:
        conf["error_cb"] = error_cb
    conf.update(overrides or {})
    producer = Producer(conf)
    producer.init_transactions(init_timeout)
    return producer


def idempotent_producer(
    kafka: KafkaSettings,
    *,
    overrides: dict[str, Any] | None = None,
    error_cb: ErrorCallback | None = None,
) -> Producer:
    """An idempotent producer (no duplicates from internal retries, order kept per partition)."""
    conf = _producer_conf(kafka)
    if error_cb is not None:
        conf["error_cb"] = error_cb
    conf.update(overrides or {})
    return Producer(conf)


def transactional_id(kafka: KafkaSettings, role: str, instance: str) -> str:
    """`<transactional_id_prefix>-<role>-<instance>`: stable per instance across restarts."""
    return f"{kafka.transactional_id_prefix}-{role}-{instance}"


class KafkaUnreachable(Exception):
    """No broker answered (in time); the message names the address or the setting to check."""

    @classmethod
    def at(cls, bootstrap: str, detail: str) -> KafkaUnreachable:
        return cls(f"Kafka unreachable at {bootstrap}: {detail}")


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The `KafkaError` a confluent-kafka exception carries as its first argument, if any."""
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def error_text(exc: BaseException) -> str:
    """The client's own text of a confluent-kafka exception (its `KafkaError`), else `exc`."""
    return str(exc.args[0] if exc.args else exc)


def is_partition_eof(err: Any) -> bool:
    """A consumer 'error' that only says the end of a partition was reached."""
    return bool(err is not None and err.code() == KafkaError._PARTITION_EOF)


def partition_lag(consumer: Consumer, partitions: Iterable[tuple[str, int]]) -> list[PartitionLag]:
    """Records between the consumer's position and the end of each partition, from the
    watermarks of the last fetch (no broker round trip)."""
    out: list[PartitionLag] = []
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return out
    for tp in consumer.position(tps):
        if tp.offset < 0:
            continue
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high is not None and high >= 0:
            out.append(PartitionLag(tp.topic, tp.partition, max(high - tp.offset, 0)))
    return out


def foreign_topics(subscribed: Iterable[str], partitions: Iterable[TopicPartition]) -> list[str]:
    """Topics of an assignment that the consumer did not subscribe to.

    A static member (`group.instance.id`) that rejoins a Stable group within the session timeout
    is handed the assignment its instance held before, without a rebalance, as long as the
    group's selected assignor is the same; a changed subscription is not compared (Kafka's
    `updateStaticMemberThenRebalanceOrCompleteJoin`, KAFKA-12759), and librdkafka passes such an
    assignment on as it is. After a restart with renamed topics it names the old topics: the
    stage would own nothing of its own input while those partitions have no owner."""
    wanted = set(subscribed)
    return sorted({tp.topic for tp in partitions if tp.topic not in wanted})


def is_fatal(err: Any) -> bool:
    """A client error after which the client cannot be used: librdkafka flags some errors
    fatal itself and reports others (a static consumer fenced by another with the same
    group.instance.id) to the consumer as a `_FATAL` error event."""
    return bool(err is not None and (err.fatal() or err.code() == KafkaError._FATAL))


def security_refusal(kafka: KafkaSettings, err: Any) -> str | None:
    """What to fix when `err` (a client error) says the broker refused this client's
    credentials or the TLS handshake failed; None for any other error. The message names the
    settings involved, never the password."""
    if err is None or not hasattr(err, "code"):
        return None
    said = err.str() if hasattr(err, "str") else str(err)
    if err.code() == KafkaError._AUTHENTICATION:
        return (
            f"the broker refused the credentials of kafka.sasl_username={kafka.sasl_username} "
            f"(kafka.sasl_mechanism={kafka.sasl_mechanism}): check kafka.sasl_password or "
            f"kafka.sasl_password_file and kafka.security_protocol; the client said: {said}"
        )
    if err.code() == KafkaError._SSL:
        return (
            "the TLS handshake with the broker failed: check kafka.ssl_ca_location (the CA "
            "that signed the broker's certificate), the broker's host names in "
            f"kafka.bootstrap_servers and kafka.security_protocol; the client said: {said}"
        )
    return None


def is_all_brokers_down(err: Any) -> bool:
    """A client error saying no broker of the cluster can be reached."""
    return bool(err is not None and err.code() == KafkaError._ALL_BROKERS_DOWN)
