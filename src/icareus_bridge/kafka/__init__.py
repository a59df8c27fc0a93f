"""The Kafka edge, the only package that drives confluent-kafka: consumers, transactions,
state transactions, topics, and the operator commands' reads and writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from icareus_bridge.lazy import exports

if TYPE_CHECKING:
    from icareus_bridge.kafka.admin import (
        KafkaRefused,
        OwnershipWatch,
        StartupError,
        ensure_topics,
        wait_for_broker,
    )
    from icareus_bridge.kafka.archive_io import ArchiveKafka
    from icareus_bridge.kafka.changelog import RestoreError, read_to_end
    from icareus_bridge.kafka.checkpoint import (
        Checkpoint,
        DeadLetterRoute,
        OutboundRecord,
        TransactionAborted,
        TransactionFatal,
        TransactionStalled,
    )
    from icareus_bridge.kafka.clients import (
        FatalClientError,
        KafkaUnreachable,
        quiet_librdkafka,
        transactional_id,
    )
    from icareus_bridge.kafka.consumer import (
        ClientError,
        ConsumedRecord,
        ConsumerFailed,
        GroupConsumer,
        Header,
        Partition,
    )
    from icareus_bridge.kafka.dispatch import DispatchTransactions, RequestsConsumer
    from icareus_bridge.kafka.identity import (
        IdentityError,
        InstanceClaim,
        claim_instance,
        resolve_instance_id,
    )
    from icareus_bridge.kafka.publish import (
        BrokerError,
        IdempotentPublisher,
        OutgoingRecord,
        TransactionalPublisher,
    )
    from icareus_bridge.kafka.replay_io import (
        PartitionFailed,
        ReadIncomplete,
        StoredRecord,
        create_compacted_topic,
        probe_topics,
        read_from_start,
    )
    from icareus_bridge.kafka.scan import Found, PartitionReader, Range, default_partition
    from icareus_bridge.kafka.stage import instance_id, now_ms
    from icareus_bridge.kafka.state import StateTransaction
    from icareus_bridge.kafka.transactions import StageTransactions

# Imported on first use, so importing the package loads none of its modules.
_EXPORTS: dict[str, str] = {
    "ArchiveKafka": "icareus_bridge.kafka.archive_io",
    "BrokerError": "icareus_bridge.kafka.publish",
    "Checkpoint": "icareus_bridge.kafka.checkpoint",
    "ClientError": "icareus_bridge.kafka.consumer",
    "ConsumedRecord": "icareus_bridge.kafka.consumer",
    "ConsumerFailed": "icareus_bridge.kafka.consumer",
    "DeadLetterRoute": "icareus_bridge.kafka.checkpoint",
    "DispatchTransactions": "icareus_bridge.kafka.dispatch",
    "FatalClientError": "icareus_bridge.kafka.clients",
    "Found": "icareus_bridge.kafka.scan",
    "GroupConsumer": "icareus_bridge.kafka.consumer",
    "Header": "icareus_bridge.kafka.consumer",
    "IdempotentPublisher": "icareus_bridge.kafka.publish",
    "IdentityError": "icareus_bridge.kafka.identity",
    "InstanceClaim": "icareus_bridge.kafka.identity",
    "KafkaRefused": "icareus_bridge.kafka.admin",
    "KafkaUnreachable": "icareus_bridge.kafka.clients",
    "OutboundRecord": "icareus_bridge.kafka.checkpoint",
    "OutgoingRecord": "icareus_bridge.kafka.publish",
    "OwnershipWatch": "icareus_bridge.kafka.admin",
    "Partition": "icareus_bridge.kafka.consumer",
    "PartitionFailed": "icareus_bridge.kafka.replay_io",
    "PartitionReader": "icareus_bridge.kafka.scan",
    "Range": "icareus_bridge.kafka.scan",
    "ReadIncomplete": "icareus_bridge.kafka.replay_io",
    "RequestsConsumer": "icareus_bridge.kafka.dispatch",
    "RestoreError": "icareus_bridge.kafka.changelog",
    "StageTransactions": "icareus_bridge.kafka.transactions",
    "StartupError": "icareus_bridge.kafka.admin",
    "StateTransaction": "icareus_bridge.kafka.state",
    "StoredRecord": "icareus_bridge.kafka.replay_io",
    "TransactionAborted": "icareus_bridge.kafka.checkpoint",
    "TransactionFatal": "icareus_bridge.kafka.checkpoint",
    "TransactionStalled": "icareus_bridge.kafka.checkpoint",
    "TransactionalPublisher": "icareus_bridge.kafka.publish",
    "claim_instance": "icareus_bridge.kafka.identity",
    "create_compacted_topic": "icareus_bridge.kafka.replay_io",
    "default_partition": "icareus_bridge.kafka.scan",
    "ensure_topics": "icareus_bridge.kafka.admin",
    "instance_id": "icareus_bridge.kafka.stage",
    "now_ms": "icareus_bridge.kafka.stage",
    "probe_topics": "icareus_bridge.kafka.replay_io",
    "quiet_librdkafka": "icareus_bridge.kafka.clients",
    "read_from_start": "icareus_bridge.kafka.replay_io",
    "read_to_end": "icareus_bridge.kafka.changelog",
    "resolve_instance_id": "icareus_bridge.kafka.identity",
    "transactional_id": "icareus_bridge.kafka.clients",
    "wait_for_broker": "icareus_bridge.kafka.admin",
}

__all__ = [
    "ArchiveKafka",
    "BrokerError",
    "Checkpoint",
    "ClientError",
    "ConsumedRecord",
    "ConsumerFailed",
    "DeadLetterRoute",
    "DispatchTransactions",
    "FatalClientError",
    "Found",
    "GroupConsumer",
    "Header",
    "IdempotentPublisher",
    "IdentityError",
    "InstanceClaim",
    "KafkaRefused",
    "KafkaUnreachable",
    "OutboundRecord",
    "OutgoingRecord",
    "OwnershipWatch",
    "Partition",
    "PartitionFailed",
    "PartitionReader",
    "Range",
    "ReadIncomplete",
    "RequestsConsumer",
    "RestoreError",
    "StageTransactions",
    "StartupError",
    "StateTransaction",
    "StoredRecord",
    "TransactionAborted",
    "TransactionFatal",
    "TransactionStalled",
    "TransactionalPublisher",
    "claim_instance",
    "create_compacted_topic",
    "default_partition",
    "ensure_topics",
    "instance_id",
    "now_ms",
    "probe_topics",
    "quiet_librdkafka",
    "read_from_start",
    "read_to_end",
    "resolve_instance_id",
    "transactional_id",
    "wait_for_broker",
]

__getattr__ = exports(__name__, _EXPORTS)
