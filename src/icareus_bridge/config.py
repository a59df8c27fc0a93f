"""The one configuration object: YAML file (embedded default `config/bridge.yaml`) overlaid by
environment variables `ICAREUS_BRIDGE__<SECTION>__<KEY>`; built once at start and passed down."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from icareus_bridge.codec.errors import dotted, field_problems
from icareus_bridge.core.provider import CrossCheckError, Distributor, ProviderSettings

ENV_PREFIX = "ICAREUS_BRIDGE__"

# The key of the embedded `config/bridge.yaml`: public, so it may only sign calls to a
# simulator on this machine.
DEMO_KEY = "local-simulator-key"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# librdkafka settings that have a key of their own in the kafka section: `kafka.extra` may not
# set them (a password there would sit in plain text in the settings and their repr).
_TYPED_CLIENT_SETTINGS = {
    "bootstrap.servers": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "ssl.key.password": "ssl_key_password",
    "client.id": "client_id",
}


class KafkaSettings(_Section):
    """The broker and how to reach it. SASL (`SASL_PLAINTEXT`, `SASL_SSL`) takes a mechanism,
    a user and a password (`sasl_password`, or `sasl_password_file`, read at start and by
    every new client); TLS (`SSL`, `SASL_SSL`) verifies the broker's certificate against
    `ssl_ca_location` (else the system's CAs) and, for mutual TLS, presents
    `ssl_certificate_location` with `ssl_key_location`. Passwords are `SecretStr`: never in a
    log line, a repr or an error message."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "icareus-bridge"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    transactional_id_prefix: str = "icareus-bridge"
    # How long `run` waits at start for a broker to answer before it exits 4; 0 = for ever.
    startup_wait_seconds: float = Field(default=120.0, ge=0)
    extra: dict[str, str] = Field(default_factory=dict)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _usable_security(self) -> KafkaSettings:
        self._check_sasl()
        self._check_tls()
        self._check_extra()
        return self

    def _check_sasl(self) -> None:
        """SASL keys only with a SASL protocol, and then all of them (one password source)."""
        # Which source wins (environment over file) is settled before this runs, in
        # `Settings.settings_customise_sources`: both here means both in one source.
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise CrossCheckError(
                "set together with kafka.sasl_password_file in one source: set only one of them",
                "sasl_password",
                "sasl_password_file",
            )
        sasl_keys = ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file")
        if not self.uses_sasl:
            stray = [k for k in sasl_keys if getattr(self, k) is not None]
            if stray:
                raise CrossCheckError(
                    f"is set but kafka.security_protocol is {self.security_protocol}: SASL "
                    "settings apply to SASL_PLAINTEXT and SASL_SSL only",
                    stray[0],
                    "security_protocol",
                )
        else:
            if self.sasl_mechanism is None:
                raise CrossCheckError(
                    f"must be set with kafka.security_protocol {self.security_protocol} "
                    f"(one of {', '.join(SASL_MECHANISMS)})",
                    "sasl_mechanism",
                    "security_protocol",
                )
            if not (self.sasl_username or "").strip():
                raise CrossCheckError(
                    f"must be set with kafka.sasl_mechanism {self.sasl_mechanism}",
                    "sasl_username",
                )
            if self.sasl_password is None and self.sasl_password_file is None:
                raise CrossCheckError(
                    f"must be set (or kafka.sasl_password_file) with kafka.sasl_mechanism "
                    f"{self.sasl_mechanism}",
                    "sasl_password",
                )
            if self.sasl_password is not None and not self.sasl_password.get_secret_value():
                raise CrossCheckError("is empty", "sasl_password")
            if self.sasl_password_file is not None:
                self._read_password_file()

    def _check_tls(self) -> None:
        """TLS keys only with a TLS protocol; a client certificate with its key; files exist."""
        tls_keys = (
            "ssl_ca_location",
            "ssl_certificate_location",
            "ssl_key_location",
            "ssl_key_password",
        )
        if not self.uses_tls:
            stray = [k for k in tls_keys if getattr(self, k) is not None]
            if stray:
                raise CrossCheckError(
                    f"is set but kafka.security_protocol is {self.security_protocol}: TLS "
                    "settings apply to SSL and SASL_SSL only",
                    stray[0],
                    "security_protocol",
                )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            given = (
                "ssl_certificate_location" if self.ssl_key_location is None else "ssl_key_location"
            )
            missing = (
                "ssl_key_location" if self.ssl_key_location is None else "ssl_certificate_location"
            )
            raise CrossCheckError(
                f"is set without kafka.{missing}: a client certificate needs both",
                given,
                missing,
            )
        if self.ssl_key_password is not None and self.ssl_key_location is None:
            raise CrossCheckError(
                "is set without kafka.ssl_key_location", "ssl_key_password", "ssl_key_location"
            )
        for key in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path: Path | None = getattr(self, key)
            if path is not None and not path.exists():
                raise CrossCheckError(f"{path} does not exist", key)

    def _check_extra(self) -> None:
        """`kafka.extra` may not set what has a typed key of its own."""
        for name in self.extra:
            typed = _TYPED_CLIENT_SETTINGS.get(name.strip().lower())
            if typed is not None:
                raise CrossCheckError(
                    f"{name!r} has a key of its own: set kafka.{typed} instead", "extra", typed
                )

    def _read_password_file(self) -> str:
        assert self.sasl_password_file is not None
        path = self.sasl_password_file
        try:
            # One trailing newline (what `echo` or a Kubernetes secret adds) is not part of it.
            password = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CrossCheckError(f"cannot read {path}: {reason}", "sasl_password_file") from exc
        if not password.strip():
            raise CrossCheckError(f"{path} is empty", "sasl_password_file")
        return password

    def secret_sasl_password(self) -> str | None:
        """The SASL password from `sasl_password` or `sasl_password_file` (read now, so a
        rotated file reaches every new client); None without SASL. Never logged."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is None:
            return None
        try:
            return self._read_password_file()
        except CrossCheckError as exc:
            raise ConfigError(f"kafka.sasl_password_file: {exc}") from exc

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every client of this process (it holds the password:
        never log it)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.secret_sasl_password()
        if self.uses_tls:
            # Hostname verification stays on (librdkafka's default `https`).
            if self.ssl_ca_location is not None:
                conf["ssl.ca.location"] = str(self.ssl_ca_location)
            if self.ssl_certificate_location is not None:
                conf["ssl.certificate.location"] = str(self.ssl_certificate_location)
            if self.ssl_key_location is not None:
                conf["ssl.key.location"] = str(self.ssl_key_location)
            if self.ssl_key_password is not None:
                conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.extra)
        return conf


class TopicSettings(_Section):
    input: str = Field(default="crm.subscription.lifecycle.v1", min_length=1)
    requests: str = Field(default="icareus.provisioning.requests.v1", min_length=1)
    results: str = Field(default="icareus.provisioning.results.v1", min_length=1)
    dlq: str = Field(default="icareus.provisioning.dlq.v1", min_length=1)
    state: str = Field(default="icareus-bridge.state.v1", min_length=1)
    # Compacted: which dead letters `replay` put back, and one audit record per replay run.
    replay_log: str = Field(default="icareus-bridge.replay.v1", min_length=1)

    @model_validator(mode="after")
    def _distinct_names(self) -> TopicSettings:
        # Two roles on one topic would read their own output as input (or compact results).
        first_use: dict[str, str] = {}
        for name in type(self).model_fields:
            topic = getattr(self, name)
            if topic in first_use:
                raise CrossCheckError(
                    f"{topic!r} is already topics.{first_use[topic]}: "
                    "every topic needs a name of its own",
                    name,
                    first_use[topic],
                )
            first_use[topic] = name
        return self


class RetrySettings(_Section):
    max_attempts: int = Field(default=6, ge=1)
    max_total_seconds: float = Field(default=30.0, gt=0)
    initial_backoff_seconds: float = Field(default=0.2, gt=0)
    max_backoff_seconds: float = Field(default=5.0, gt=0)
    jitter_seconds: float = Field(default=0.2, ge=0)

    @model_validator(mode="after")
    def _backoff_grows(self) -> RetrySettings:
        if self.initial_backoff_seconds > self.max_backoff_seconds:
            raise CrossCheckError(
                f"{self.initial_backoff_seconds} is more than icareus.retry.max_backoff_seconds "
                f"({self.max_backoff_seconds}): the first wait cannot exceed the longest",
                "initial_backoff_seconds",
                "max_backoff_seconds",
            )
        return self


class IcareusOperation(_Section):
    module: str
    action: str
    # Wire names of the parameters after organizationId, in signing order (DOMAIN.md);
    # empty = the documented defaults of that operation.
    params: list[str] = Field(default_factory=list)


DEFAULT_OPERATION_PARAMS: dict[str, tuple[str, ...]] = {
    "add_user": (
        "externalId",
        "firstName",
        "lastName",
        "emailAddress",
        "phoneNumber",
        "countryId",
        "postalCode",
        "cityName",
    ),
    "remove_user": ("userId",),
    "activate_products": ("userId", "productIds"),
    "cancel_products": ("userId", "productIds"),
    "add_device": ("userId", "deviceId", "deviceType"),
    "remove_device": ("userId", "deviceId"),
    "get_user": ("userId", "externalId"),
}


def _default_operations() -> dict[str, IcareusOperation]:
    def op(module: str, action: str, name: str) -> IcareusOperation:
        return IcareusOperation(
            module=module, action=action, params=list(DEFAULT_OPERATION_PARAMS[name])
        )

    return {
        "add_user": op("user", "addUser", "add_user"),
        "remove_user": op("user", "removeUser", "remove_user"),
        "activate_products": op("packages", "activateProducts", "activate_products"),
        "cancel_products": op("packages", "cancelProducts", "cancel_products"),
        "add_device": op("devices", "addDevice", "add_device"),
        "remove_device": op("devices", "removeDevice", "remove_device"),
        "get_user": op("user", "getUser", "get_user"),
    }


class IcareusSettings(_Section):
    base_url: str = "http://127.0.0.1:8085/api"
    organization_id: str = "1001"
    key: SecretStr | None = None
    key_file: Path | None = None
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    read_timeout_seconds: float = Field(default=5.0, gt=0)
    total_timeout_seconds: float = Field(default=10.0, gt=0)
    max_in_flight: int = Field(default=128, ge=1)
    max_connections: int = Field(default=128, ge=1)
    # HTTP library under the client: aiohttp sustains several times httpx's request rate on
    # one core (docs/BENCHMARKS.md); httpx stays available, e.g. for its mock transport.
    http_backend: Literal["aiohttp", "httpx"] = "aiohttp"
    # HTTPS (docs/ICAREUS.md, "HTTPS"): Icareus' certificate is always verified, against
    # `ca_file` (a PEM bundle) when set, else the system's trust store. A client certificate
    # (`client_cert_file` with `client_key_file`) is sent where Icareus asks for one.
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    retry: RetrySettings = Field(default_factory=RetrySettings)
    operations: dict[str, IcareusOperation] = Field(default_factory=_default_operations)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"{value!r} has no valid port: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value

    @model_validator(mode="after")
    def _usable_tls_files(self) -> IcareusSettings:
        tls_keys = ("ca_file", "client_cert_file", "client_key_file")
        given = [k for k in tls_keys if getattr(self, k) is not None]
        if given and urlsplit(self.base_url).scheme != "https":
            raise CrossCheckError(
                f"is set but icareus.base_url is {self.base_url!r}: TLS settings only apply "
                "to an https:// base_url (calls over http:// are not encrypted)",
                given[0],
                "base_url",
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise CrossCheckError(
                "a client certificate needs both icareus.client_cert_file and "
                "icareus.client_key_file",
                "client_cert_file" if self.client_cert_file is None else "client_key_file",
            )
        for name in given:
            path: Path = getattr(self, name)
            try:
                with path.open("rb") as f:
                    head = f.read(1 << 16)
            except OSError as exc:
                raise CrossCheckError(f"cannot read {path}: {exc.strerror or exc}", name) from exc
            if b"-----BEGIN " not in head:
                raise CrossCheckError(f"{path} holds no PEM data", name)
        if given:
            self.tls_context()  # a file that is PEM but no certificate (or key) fails here
        return self

    def tls_context(self) -> ssl.SSLContext:
        """The TLS settings of calls to Icareus: certificate and host name verified, against
        `ca_file` if set (else the system's trust store); the client certificate if set."""
        step = "ca_file"
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            if self.client_cert_file is not None and self.client_key_file is not None:
                step = "client_cert_file"
                context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        except (ssl.SSLError, OSError) as exc:
            path = self.ca_file if step == "ca_file" else self.client_cert_file
            what = "CA certificates" if step == "ca_file" else "a certificate and its key"
            raise CrossCheckError(
                f"{path} does not hold usable {what}: {getattr(exc, 'reason', None) or exc}",
                step,
            ) from exc
        return context

    @model_validator(mode="after")
    def _one_usable_key(self) -> IcareusSettings:
        # Which source wins (environment over file) is settled before this runs, in
        # `Settings.settings_customise_sources`: both here means both in one source.
        if self.key is not None and self.key_file is not None:
            raise CrossCheckError(
                "set together with icareus.key_file in one source: set only one of them",
                "key",
                "key_file",
            )
        if self.key is None and self.key_file is None:
            raise ValueError("one of icareus.key or icareus.key_file must be set")
        if self.key is not None:
            if not self.key.get_secret_value().strip():
                raise CrossCheckError("is empty", "key")
            key, source = self.key.get_secret_value(), "key"
        else:
            key, source = self._read_key_file(), "key_file"
        host = urlsplit(self.base_url).hostname or ""
        if key == DEMO_KEY and not _is_loopback(host):
            raise CrossCheckError(
                "holds the demo key of the embedded configuration, which signs calls to a "
                f"simulator on this machine only, and icareus.base_url points at {host}: set "
                f"the organization key with icareus.key_file (or {ENV_PREFIX}ICAREUS__KEY_FILE)",
                source,
                "base_url",
            )
        return self

    def _read_key_file(self) -> str:
        assert self.key_file is not None
        try:
            key = self.key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CrossCheckError(f"cannot read {self.key_file}: {reason}", "key_file") from exc
        if not key:
            raise CrossCheckError(f"{self.key_file} is empty", "key_file")
        return key

    def secret_key(self) -> str:
        """The organization key, read from `key` or `key_file`; never logged."""
        if self.key is not None:
            return self.key.get_secret_value()
        try:
            return self._read_key_file()
        except CrossCheckError as exc:
            raise ConfigError(f"icareus.key_file: {exc}") from exc


def _is_loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LimitSettings(_Section):
    """What one CRM event may hold; beyond it the event is refused at validation (DLQ, reason
    INVALID) instead of being planned into thousands of requests. See docs/CORE.md, "Limits"."""

    max_event_bytes: int = Field(default=1_048_576, ge=1)  # the encoded record value
    max_services: int = Field(default=200, ge=0)
    max_installed_items: int = Field(default=50, ge=0)
    max_string_length: int = Field(default=1024, ge=1)  # characters, any string of the event


class SchemaRegistrySettings(_Section):
    url: str = ""
    basic_auth_user_info: SecretStr | None = None


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9400, ge=0, le=65535)


class PlannerSettings(_Section):
    group_id: str = "icareus-bridge-planner"
    # Stable per process across restarts (transactional.id and static group membership);
    # empty = the host name. Two live planners must never share one.
    instance_id: str = ""
    batch_max_events: int = Field(default=500, ge=1)
    batch_max_ms: int = Field(default=100, ge=1)


class DispatcherSettings(_Section):
    group_id: str = "icareus-bridge-dispatcher"
    # Stable per process across restarts (transactional.id and static group membership);
    # empty = the host name. Two live dispatchers must never share one.
    instance_id: str = ""
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)
    # Results, dead letters and offsets become visible together, in a transaction that starts
    # as soon as a request is finished and no transaction is in flight. This is the least
    # time between the starts of two transactions (0 = none: commit whenever ready).
    commit_interval_ms: int = Field(default=0, ge=0)
    # Requests read but not finished (queued + in flight) before partitions are paused.
    max_queued: int = Field(default=2048, ge=1)


class DlqSettings(_Section):
    # Loop guard of `replay`: a dead letter already replayed this often is refused (--force).
    max_replays: int = Field(default=3, ge=0)


class ArchiveSettings(_Section):
    # CRM's consumer group on the results topic: `archive --delete` never deletes a result
    # that group has not read yet. Empty = CRM's position is not checked.
    crm_group_id: str = ""
    codec: Literal["deflate", "zstandard"] = "deflate"
    # How long `archive` waits for the broker before it reports Kafka unreachable.
    kafka_timeout_seconds: float = Field(default=15.0, gt=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: console (for people) when the log stream is a terminal, JSON otherwise.
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Everything the bridge reads at start. Sections mirror `config/bridge.yaml`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    icareus: IcareusSettings
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: the file arrives as init arguments, so env goes first.
        return (
            env_settings,
            _FileKeyYieldsToEnvironment(settings_cls, init_settings, env_settings),
        )


class _FileKeyYieldsToEnvironment(PydanticBaseSettingsSource):
    """The file's values, less its `icareus.key` and `icareus.key_file` when the environment
    sets either: the sources are merged key by key, so without this a `key_file` from the
    environment would sit beside the file's demo `key`, which would win. The same for
    `kafka.sasl_password` and `kafka.sasl_password_file`."""

    KEY_FIELDS = ("key", "key_file")
    SECRET_PAIRS: ClassVar[dict[str, tuple[str, ...]]] = {
        "icareus": KEY_FIELDS,
        "kafka": ("sasl_password", "sasl_password_file"),
    }

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        file_source: PydanticBaseSettingsSource,
        env_source: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._file_source = file_source
        self._env_source = env_source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is in __call__

    def __call__(self) -> dict[str, Any]:
        data = self._file_source()
        env = self._env_source()
        for section, fields in self.SECRET_PAIRS.items():
            from_env = env.get(section)
            from_file = data.get(section)
            if (
                isinstance(from_env, dict)
                and isinstance(from_file, dict)
                and any(k in from_env for k in fields)
            ):
                kept = {k: v for k, v in from_file.items() if k not in fields}
                data = {**data, section: kept}
        return data


def default_config_path() -> Path:
    """`config/bridge.yaml` of a source checkout, else the copy packaged with the code."""
    repo_copy = Path(__file__).resolve().parents[2] / "config" / "bridge.yaml"
    if repo_copy.is_file():
        return repo_copy
    return Path(str(resources.files("icareus_bridge").joinpath("bridge.yaml")))


def _environment_variables(paths: Sequence[tuple[str, ...]]) -> list[str]:
    """The set environment variables that gave a value at (or above) each key path: a bad value
    from the environment is fixed there, not in the file."""
    present = {name.upper(): name for name in os.environ}
    found: list[str] = []
    for path in paths:
        for end in range(len(path), 0, -1):
            name = present.get((ENV_PREFIX + "__".join(path[:end])).upper())
            if name is not None:
                if name not in found:
                    found.append(name)
                break
    return found


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for problem in field_problems(exc):
        loc, message, cause = problem
        paths = [loc]
        if isinstance(cause, ValueError):
            message = str(cause)  # without pydantic's "Value error, " in front
        if isinstance(cause, CrossCheckError):
            paths = [loc + tuple(k.split(".")) for k in cause.keys] or paths
        line = f"  {dotted(paths[0])}: {message}"
        variables = _environment_variables(paths)
        if variables:
            noun = "variable" if len(variables) == 1 else "variables"
            line += f" (from environment {noun} {', '.join(variables)})"
        lines.append(line)
    return "invalid configuration:\n" + "\n".join(lines)


def _refuse_unknown_sections_in_env() -> None:
    # pydantic-settings reads only the variables that match a section and drops the rest, so a
    # misspelt section (or a single `_` where `__` belongs) would be ignored without a word.
    sections = set(Settings.model_fields)
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            raise ConfigError(
                f"{name}: no configuration section {section!r} "
                f"(sections: {', '.join(sorted(sections))})"
            )


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the YAML file, apply environment overrides, validate; `ConfigError` names the key."""
    cfg_path = Path(path) if path is not None else default_config_path()
    try:
        raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {cfg_path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {cfg_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {cfg_path} must hold a mapping of sections")
    _refuse_unknown_sections_in_env()
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc
    except SettingsError as exc:  # a variable that should hold JSON (a section, a list) does not
        section = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
        variables = sorted(
            name
            for name in os.environ
            if name.upper().startswith(f"{ENV_PREFIX}{section.upper()}__")
            or name.upper() == f"{ENV_PREFIX}{section.upper()}"
        )
        raise ConfigError(
            f"{section or 'environment'}: {exc} (environment variables: {', '.join(variables)})"
        ) from exc


__all__ = [
    "DEMO_KEY",
    "ArchiveSettings",
    "ConfigError",
    "CrossCheckError",
    "Distributor",
    "IcareusSettings",
    "KafkaSettings",
    "LimitSettings",
    "ProviderSettings",
    "Settings",
    "TopicSettings",
    "load_settings",
]
