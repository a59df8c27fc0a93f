"""Avro of every topic <-> domain models: between the Kafka edge (`kafka/`) and the stages."""

from icareus_bridge.codec.errors import DecodeError, DecodeReason, EncodeError, SchemaRegistryError
from icareus_bridge.codec.records import (
    EVENT,
    REQUEST,
    RESULT,
    SCHEMA_FILES,
    SINGLE_OBJECT_MAGIC,
    STATE,
    Codec,
    SchemaSet,
    SchemaVersion,
    default_codec,
    default_schemas_dir,
    record_identity,
    state_to_avro,
    validate_event,
    validate_event_json,
)

__all__ = [
    "EVENT",
    "REQUEST",
    "RESULT",
    "SCHEMA_FILES",
    "SINGLE_OBJECT_MAGIC",
    "STATE",
    "Codec",
    "DecodeError",
    "DecodeReason",
    "EncodeError",
    "SchemaRegistryError",
    "SchemaSet",
    "SchemaVersion",
    "default_codec",
    "default_schemas_dir",
    "record_identity",
    "state_to_avro",
    "validate_event",
    "validate_event_json",
]
