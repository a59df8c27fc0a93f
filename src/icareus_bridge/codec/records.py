"""The one Avro codec of the bridge: bytes on every topic <-> domain models (events, requests,
results, state records), over the compiled reader and writer (`reader.py`, `writer.py`) and,
when configured, the schema registry (`registry.py`); its errors are in `errors.py`.

Default wire format is Avro single-object encoding (`C3 01`, 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's parsing canonical form, binary body); with a schema registry
configured, the Confluent wire format (`00`, 4-byte big-endian schema id, body). The reader
accepts both, whatever is configured, so a topic can move from one to the other. Every way bytes
can fail to become a valid event raises one `DecodeError` whose `reason` becomes `dlq.reason`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import fastavro
import msgspec
from fastavro.schema import fingerprint, to_parsing_canonical_form

from icareus_bridge.codec.errors import (
    DecodeError,
    DecodeReason,
    EncodeError,
    OutOfRange,
    UnsupportedSchema,
    field_problems,
)
from icareus_bridge.codec.reader import Reader, Struct, compile_reader
from icareus_bridge.codec.writer import Writer, compile_writer
from icareus_bridge.core.model import (
    AccountState,
    Action,
    ActionCode,
    InstalledItem,
    LifecycleEvent,
    ProvisioningRequest,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
    plain,
    sorted_products,
)

if TYPE_CHECKING:
    from icareus_bridge.codec.registry import SchemaRegistryClient
    from icareus_bridge.config import Settings

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_HEADER = 10  # 2 magic bytes + 8 fingerprint bytes
_CONFLUENT_HEADER = 5  # 1 magic byte + 4 schema id bytes

# Short record name -> schema file stem under schemas/ (and schemas/history/<stem>.v<N>.avsc).
EVENT = "SubscriptionLifecycleEvent"
REQUEST = "ProvisioningRequest"
RESULT = "ProvisioningResult"
STATE = "SubscriptionRecord"
SCHEMA_FILES: dict[str, str] = {
    EVENT: "subscription_lifecycle_event",
    REQUEST: "provisioning_request",
    RESULT: "provisioning_result",
    STATE: "subscription_record",
}

_KNOWN_ACTIONS = frozenset(a.value for a in ActionCode)


# --- schemas ---------------------------------------------------------------------------------


def default_schemas_dir() -> Path:
    """`schemas/` of a source checkout, else a copy packaged with the code."""
    repo_copy = Path(__file__).resolve().parents[3] / "schemas"
    if repo_copy.is_dir():
        return repo_copy
    return Path(str(resources.files("icareus_bridge").joinpath("schemas")))


def _without_logical_types(node: Any) -> Any:
    # Readers keep timestamps as epoch-millisecond ints, as the domain model holds them;
    # logicalType is not part of the canonical form, so fingerprints are unaffected.
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class SchemaVersion:
    """One writer schema the reader can resolve: the current one or a committed older one."""

    name: str  # short record name, e.g. SubscriptionLifecycleEvent
    version: int  # 0 for the current file when it has no history copy yet
    source: str  # schema JSON text as stored
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO
    parsed: Any = field(repr=False)  # fastavro parsed schema, logical types stripped


def _load_version(name: str, text: str, version: int) -> SchemaVersion:
    raw = json.loads(text)
    canonical = to_parsing_canonical_form(raw)
    return SchemaVersion(
        name=name,
        version=version,
        source=text,
        canonical=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
        parsed=fastavro.parse_schema(_without_logical_types(raw)),
    )


def parse_writer_schema(text: str) -> Any:
    """A writer schema received from elsewhere (the registry), ready for reading."""
    return fastavro.parse_schema(_without_logical_types(json.loads(text)))


class SchemaSet:
    """The schemas of `schemas/`: the current version of each record (written and used as the
    reader schema) and every committed version in `schemas/history/` (resolvable as writers)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_schemas_dir()
        self.current: dict[str, SchemaVersion] = {}
        self.history: dict[str, list[SchemaVersion]] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for name, stem in SCHEMA_FILES.items():
            current_text = (self.directory / f"{stem}.avsc").read_text(encoding="utf-8")
            versions = []
            for path in sorted((self.directory / "history").glob(f"{stem}.v*.avsc")):
                number = int(path.name[len(stem) + 2 : -len(".avsc")])
                versions.append(_load_version(name, path.read_text(encoding="utf-8"), number))
            versions.sort(key=lambda v: v.version)
            current = _load_version(name, current_text, 0)
            same = [v for v in versions if v.fingerprint == current.fingerprint]
            if same:
                current = _load_version(name, current_text, same[-1].version)
            self.current[name] = current
            self.history[name] = versions
            for v in versions:
                self.by_fingerprint[v.fingerprint] = v
            # The current schema always resolves to itself (no resolution step, fastest path).
            self.by_fingerprint[current.fingerprint] = current


def _event_models_reader(schema: SchemaVersion) -> Reader | None:
    """The compiled reader that builds LifecycleEvent straight from the current event schema,
    or None when schema and model have drifted apart (then fastavro + validation is used)."""
    ns = "com.crm.provisioning.v1."
    models: dict[str, Any] = {
        "SubscriptionLifecycleEvent": LifecycleEvent,
        "Action": Action,
        "Subscription": Subscription,
        "Subscriber": Subscriber,
        "Service": Service,
        "InstalledItem": InstalledItem,
    }
    raw = json.loads(schema.source)
    records: dict[str, Any] = {}
    enums: dict[str, list[Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                records[node["name"]] = node
                for f in node["fields"]:
                    walk(f["type"])
            elif node.get("type") == "enum":
                enums[node["name"]] = node["symbols"]
            elif node.get("type") == "array":
                walk(node["items"])

    walk(raw)
    if set(records) != set(models):
        return None
    for name, rec in records.items():
        if {f["name"] for f in rec["fields"]} != set(models[name].__struct_fields__):
            return None
    try:
        enum_values: dict[str, list[Any]] = {
            ns + "SubscriptionState": [SubscriptionState(v) for v in enums["SubscriptionState"]],
            ns + "ServiceState": [ServiceState(v) for v in enums["ServiceState"]],
        }
    except (KeyError, ValueError):
        return None
    return compile_reader(
        raw,
        builders={ns + name: Struct(model) for name, model in models.items()},
        enums=enum_values,
    )


# --- the codec -------------------------------------------------------------------------------


class Codec:
    """Encodes records of the bridge's schemas and decodes any known version of them.

    Built once at start from the configuration (`Codec.from_settings`) and passed down.
    With a registry client, `encode` writes the Confluent format under the record's subject
    (`<topic>-value`); without one, single-object encoding."""

    def __init__(
        self,
        schemas: SchemaSet | None = None,
        *,
        registry: SchemaRegistryClient | None = None,
        subjects: Mapping[str, str] | None = None,
    ) -> None:
        self.schemas = schemas or SchemaSet()
        self.registry = registry
        self.subjects = dict(subjects or {})
        self._headers = {
            name: SINGLE_OBJECT_MAGIC + v.fingerprint for name, v in self.schemas.current.items()
        }
        self._event_header = self._headers[EVENT]
        # Compiled writers for the current schemas (the planner's hot path); fastavro writes
        # any schema the compiler does not handle.
        self._writers: dict[str, Writer] = {}
        for name, v in self.schemas.current.items():
            with contextlib.suppress(UnsupportedSchema):
                self._writers[name] = compile_writer(json.loads(v.source))
        self._event_reader = _event_models_reader(self.schemas.current[EVENT])
        # Compiled readers (plain dicts, fastavro's shape) for bodies written with a current
        # schema: stricter than fastavro on numbers out of range (see codec/reader.py).
        self._readers: dict[str, Reader] = {}
        for name, v in self.schemas.current.items():
            with contextlib.suppress(ValueError):
                self._readers[name] = compile_reader(json.loads(v.source), sequence=list)
        self._registry_ids: dict[str, int] = {}
        self._registry_writers: dict[int, tuple[str, Any]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """Single-object encoding, or the Confluent format when `schema_registry.url` is set."""
        if not settings.schema_registry.url:
            return cls()
        # Imported here: httpx is slow to import and most commands never reach a registry.
        from icareus_bridge.codec.registry import SchemaRegistryClient

        auth = settings.schema_registry.basic_auth_user_info
        registry = SchemaRegistryClient(
            settings.schema_registry.url,
            user_info=auth.get_secret_value() if auth is not None else None,
        )
        t = settings.topics
        return cls(
            registry=registry,
            subjects={
                EVENT: f"{t.input}-value",
                REQUEST: f"{t.requests}-value",
                RESULT: f"{t.results}-value",
                STATE: f"{t.state}-value",
            },
        )

    # -- generic ------------------------------------------------------------------------------

    def encode(self, record: str, obj: Mapping[str, Any]) -> bytes:
        """Avro bytes of `obj` written with the current schema of `record` (short or full
        name, e.g. `ProvisioningRequest` or `com.icareus.bridge.v1.ProvisioningRequest`)."""
        record = record.rsplit(".", 1)[-1]
        schema = self.schemas.current[record]
        if self.registry is not None:
            header = b"\x00" + self._registry_id(record).to_bytes(4, "big")
        else:
            header = self._headers[record]
        writer = self._writers.get(record)
        try:
            if writer is not None:
                return header + writer(obj)
            buf = io.BytesIO()
            buf.write(header)
            fastavro.schemaless_writer(buf, schema.parsed, plain(obj))  # models as dicts
            return buf.getvalue()
        except (OutOfRange, OverflowError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(record, _encode_failure(exc)) from exc

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(short record name, record as a dict in the current schema's shape), or DecodeError."""
        name, offset, writer = self._frame(data)
        return name, self._read(data, offset, name, writer)

    def _frame(self, data: bytes) -> tuple[str, int, Any]:
        """(short record name, offset of the body, parsed writer schema) from the framing alone,
        or DecodeError (NOT_AVRO, UNKNOWN_SCHEMA): what to read the body with, unread."""
        if len(data) >= _SINGLE_OBJECT_HEADER and data[:2] == SINGLE_OBJECT_MAGIC:
            writer = self.schemas.by_fingerprint.get(data[2:_SINGLE_OBJECT_HEADER])
            if writer is None:
                raise DecodeError(
                    DecodeReason.UNKNOWN_SCHEMA,
                    f"unknown writer schema fingerprint {data[2:10].hex()}",
                )
            return writer.name, _SINGLE_OBJECT_HEADER, writer.parsed
        if len(data) >= _CONFLUENT_HEADER and data[0] == CONFLUENT_MAGIC and self.registry:
            name, parsed = self._registry_writer(int.from_bytes(data[1:5], "big"))
            return name, _CONFLUENT_HEADER, parsed
        raise DecodeError(
            DecodeReason.NOT_AVRO,
            f"not Avro single-object or registry framing (first bytes {data[:4].hex() or 'none'})",
        )

    def _read(self, data: bytes, offset: int, name: str, writer: Any) -> dict[str, Any]:
        current = self.schemas.current[name]
        compiled = self._readers.get(name)
        if compiled is not None and writer is current.parsed:
            result: dict[str, Any] = _run_compiled(compiled, data, offset, name)
            return result
        reader = None if writer is current.parsed else current.parsed
        fo = io.BytesIO(data)
        fo.seek(offset)
        try:
            obj: Any = fastavro.schemaless_reader(fo, writer, reader)
        except fastavro.read.SchemaResolutionError as exc:
            raise DecodeError(
                DecodeReason.UNKNOWN_SCHEMA, f"{name}: writer schema not readable: {exc}"
            ) from exc
        except (EOFError, ValueError, IndexError, TypeError, KeyError, OverflowError) as exc:
            raise DecodeError(
                DecodeReason.MALFORMED, f"{name}: body does not decode: {exc!r}"
            ) from exc
        if fo.tell() != len(data):
            raise DecodeError(
                DecodeReason.MALFORMED,
                f"{name}: {len(data) - fo.tell()} trailing bytes after the record",
            )
        if not isinstance(obj, dict):
            raise DecodeError(DecodeReason.MALFORMED, f"{name}: body is not a record")
        return obj

    def _registry_id(self, record: str) -> int:
        schema_id = self._registry_ids.get(record)
        if schema_id is None:
            assert self.registry is not None
            subject = self.subjects.get(record, f"{record}-value")
            schema_id = self.registry.register(subject, self.schemas.current[record].source)
            self._registry_ids[record] = schema_id
        return schema_id

    def _registry_writer(self, schema_id: int) -> tuple[str, Any]:
        known = self._registry_writers.get(schema_id)
        if known is not None:
            return known
        assert self.registry is not None
        text = self.registry.schema_by_id(schema_id)
        if text is None:
            raise DecodeError(DecodeReason.UNKNOWN_SCHEMA, f"schema id {schema_id} not in registry")
        try:
            raw = json.loads(text)
            full_name = raw.get("name", "") if isinstance(raw, dict) else ""
            short = full_name.rsplit(".", 1)[-1]
            if short not in self.schemas.current:
                raise DecodeError(
                    DecodeReason.UNKNOWN_SCHEMA,
                    f"schema id {schema_id}: unknown record {full_name!r}",
                )
            canonical_fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
            local = self.schemas.by_fingerprint.get(canonical_fp)
            parsed = local.parsed if local is not None else parse_writer_schema(text)
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise DecodeError(
                DecodeReason.UNKNOWN_SCHEMA, f"schema id {schema_id} does not parse: {exc}"
            ) from exc
        self._registry_writers[schema_id] = (short, parsed)
        return short, parsed

    def _decode_as(self, data: bytes, expected: str) -> dict[str, Any]:
        name, obj = self.decode(data)
        if name != expected:
            raise DecodeError(DecodeReason.UNKNOWN_SCHEMA, f"expected {expected}, got {name}")
        return obj

    # -- typed --------------------------------------------------------------------------------

    def encode_event(self, event: LifecycleEvent) -> bytes:
        return self._encode_model(EVENT, event)

    def decode_event(self, data: bytes) -> LifecycleEvent:
        """Decode and validate one CRM event; DecodeError (stage decode or validate) if not.

        Bytes written with the current event schema take the compiled reader, which builds the
        models directly: the schema already guarantees every type the model would check, so
        only the action code is left to validate. Older writer versions are resolved by
        fastavro and validated by the model."""
        reader = self._event_reader
        start = 0
        if reader is not None:
            if data[:_SINGLE_OBJECT_HEADER] == self._event_header:
                start = _SINGLE_OBJECT_HEADER
            elif self.registry is not None and len(data) > _CONFLUENT_HEADER and data[0] == 0:
                name, writer = self._registry_writer(int.from_bytes(data[1:5], "big"))
                if name == EVENT and writer is self.schemas.current[EVENT].parsed:
                    start = _CONFLUENT_HEADER
        if reader is not None and start:
            return _check_action(_run_compiled(reader, data, start, EVENT))
        return validate_event(self._decode_as(data, EVENT))

    def _encode_model(self, record: str, model: Any) -> bytes:
        # The compiled writer reads the model's fields directly: no model_dump on the hot path.
        writer = self._writers.get(record)
        if writer is None or self.registry is not None:
            return self.encode(record, model.model_dump())
        try:
            return self._headers[record] + writer(model)
        except (OutOfRange, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(record, _encode_failure(exc)) from exc

    def encode_request(self, request: ProvisioningRequest) -> bytes:
        return self._encode_model(REQUEST, request)

    def decode_request(self, data: bytes) -> ProvisioningRequest:
        return _validated(ProvisioningRequest, self._decode_as(data, REQUEST))

    def decode_inbound(self, data: bytes) -> ProvisioningRequest | LifecycleEvent:
        """One record of the requests topic, decoded once: a request, or the one other record
        there, a CRM event the planner forwards (RESET_SUBSCRIPTION; the caller checks the code).
        Branches on the writer schema's name. Bytes that are neither a valid request nor a valid
        event raise the DecodeError `decode_request` raises for them."""
        name, offset, writer = self._frame(data)
        if name == EVENT:
            try:
                return self._event_at(data, offset, writer)
            except DecodeError as exc:
                if exc.reason is not DecodeReason.INVALID:
                    raise  # the body does not decode: the same error as a request's read
            raise DecodeError(DecodeReason.UNKNOWN_SCHEMA, f"expected {REQUEST}, got {EVENT}")
        obj = self._read(data, offset, name, writer)
        if name != REQUEST:
            raise DecodeError(DecodeReason.UNKNOWN_SCHEMA, f"expected {REQUEST}, got {name}")
        return _validated(ProvisioningRequest, obj)

    def _event_at(self, data: bytes, offset: int, writer: Any) -> LifecycleEvent:
        """The event whose body starts at `offset`, written with `writer` (as decode_event)."""
        reader = self._event_reader
        if reader is not None and writer is self.schemas.current[EVENT].parsed:
            return _check_action(_run_compiled(reader, data, offset, EVENT))
        return validate_event(self._read(data, offset, EVENT, writer))

    def encode_result(self, result: ProvisioningResult) -> bytes:
        return self._encode_model(RESULT, result)

    def decode_result(self, data: bytes) -> ProvisioningResult:
        return _validated(ProvisioningResult, self._decode_as(data, RESULT))

    def encode_state(self, record: SubscriptionRecord | None) -> bytes | None:
        """Changelog value; None (a tombstone) forgets the subscription."""
        if record is None:
            return None
        return self.encode(STATE, state_to_avro(record))

    def decode_state(self, data: bytes | None) -> SubscriptionRecord | None:
        if data is None:
            return None
        return state_from_avro(self._decode_as(data, STATE))


def _run_compiled(reader: Reader, data: bytes, start: int, name: str) -> Any:
    """Decode the body at `start` with a compiled reader; it must use every byte."""
    try:
        value, end = reader(data, start)
    except (EOFError, IndexError, KeyError, ValueError) as exc:
        raise DecodeError(DecodeReason.MALFORMED, f"{name}: body does not decode: {exc!r}") from exc
    if end != len(data):
        raise DecodeError(
            DecodeReason.MALFORMED, f"{name}: {len(data) - end} trailing bytes after the record"
        )
    return value


def _encode_failure(exc: BaseException) -> str:
    # OutOfRange names the field itself; the others get their class for context.
    if isinstance(exc, OutOfRange):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def record_identity(data: bytes | None) -> tuple[str, str, str] | None:
    """(record name, first field's name, its value) of single-object Avro bytes whose schema
    starts with a string field (`request_id`, `event_id`, `subscription_id`), else None. Reads
    only that field: for naming a record too large or too broken to handle whole."""
    if data is None or data[:2] != SINGLE_OBJECT_MAGIC:
        return None
    head = _first_field_reader(data[2:_SINGLE_OBJECT_HEADER])
    if head is None:
        return None
    name, field_name, reader = head
    try:
        value, _ = reader(data, _SINGLE_OBJECT_HEADER)
    except (EOFError, IndexError, KeyError, ValueError):
        return None
    return name, field_name, str(value[field_name])


@cache
def _first_field_reader(fp: bytes) -> tuple[str, str, Reader] | None:
    version = default_codec().schemas.by_fingerprint.get(fp)
    if version is None:
        return None
    fields = json.loads(version.source).get("fields") or []
    if not fields or fields[0].get("type") != "string":
        return None
    reader = compile_reader({"type": "record", "name": "Head", "fields": [fields[0]]})
    return version.name, str(fields[0]["name"]), reader


@cache
def default_codec() -> Codec:
    """A single-object codec over the repository's `schemas/` (tools, tests, benchmarks)."""
    return Codec()


# --- validation (stage validate) -------------------------------------------------------------


def _message_of(exc: msgspec.ValidationError) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in field_problems(exc))


def _invalid(exc: msgspec.ValidationError) -> DecodeError:
    """INVALID, naming the first field refused and listing every refusal."""
    return DecodeError(DecodeReason.INVALID, _message_of(exc), field=field_problems(exc)[0].field)


def _check_action(event: LifecycleEvent) -> LifecycleEvent:
    if event.action.code not in _KNOWN_ACTIONS:
        raise DecodeError(
            DecodeReason.INVALID,
            f"action.code: unknown CRM action code {event.action.code!r}",
            field="action.code",
        )
    return event


def validate_event(obj: Mapping[str, Any]) -> LifecycleEvent:
    """A decoded event dict as a LifecycleEvent; DecodeError INVALID naming the field if not."""
    try:
        event = LifecycleEvent.model_validate(obj)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    return _check_action(event)


def validate_event_json(text: str | bytes) -> LifecycleEvent:
    """An event given as JSON (schema field names, null for absent options), strictly typed:
    a string where the schema has a long is an error, as it would be in Avro."""
    try:
        event = LifecycleEvent.model_validate_json(text)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except msgspec.DecodeError as exc:  # msgspec's base of ValidationError: not JSON at all
        raise DecodeError(DecodeReason.MALFORMED, f"not valid JSON: {exc}") from exc
    return _check_action(event)


_M = TypeVar("_M", ProvisioningRequest, ProvisioningResult)


def _validated(model: type[_M], obj: Any) -> _M:
    try:
        return model.model_validate(obj)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc


# --- state record <-> Avro shape -------------------------------------------------------------


def state_to_avro(record: SubscriptionRecord) -> dict[str, Any]:
    """The changelog shape: accounts as a list in viewing-point order, devices as records."""
    return {
        "subscription_id": record.subscription_id,
        "subscription_number": record.subscription_number,
        "last_version": record.last_version,
        "last_event_id": record.last_event_id,
        "snapshot": record.snapshot,  # the compiled writer reads the model itself
        "accounts": [
            {
                "distributor": a.distributor,
                "account_key": a.account_key,
                "registered": a.registered,
                "registration_rejected": a.registration_rejected,
                "user_id": a.user_id,
                "products": list(sorted_products(a.products)),
                "devices": [
                    {"device_id": d, "device_type": t} for d, t in sorted(a.devices.items())
                ],
            }
            for a in record.accounts.values()
        ],
    }


def state_from_avro(obj: Mapping[str, Any]) -> SubscriptionRecord:
    try:
        accounts = {
            a["distributor"]: AccountState(
                distributor=a["distributor"],
                account_key=a["account_key"],
                registered=a["registered"],
                registration_rejected=a["registration_rejected"],
                user_id=a["user_id"],
                products=frozenset(a["products"]),
                devices={d["device_id"]: d["device_type"] for d in a["devices"]},
            )
            for a in obj["accounts"]
        }
        return SubscriptionRecord.model_validate(
            {
                "subscription_id": obj["subscription_id"],
                "subscription_number": obj["subscription_number"],
                "last_version": obj["last_version"],
                "last_event_id": obj["last_event_id"],
                "snapshot": obj["snapshot"],
                "accounts": accounts,
            }
        )
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc


__all__ = [
    "EVENT",
    "REQUEST",
    "RESULT",
    "SCHEMA_FILES",
    "SINGLE_OBJECT_MAGIC",
    "STATE",
    "Codec",
    "SchemaSet",
    "SchemaVersion",
    "default_codec",
    "default_schemas_dir",
    "record_identity",
    "state_from_avro",
    "state_to_avro",
    "validate_event",
    "validate_event_json",
]
