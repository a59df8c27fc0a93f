"""The one configuration object: YAML file (embedded default `config/bridge.yaml`) overlaid by
environment variables `ICAREUS_BRIDGE__<SECTION>__<KEY>`; built once at start and passed down."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "ICAREUS_BRIDGE__"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    client_id: str = "icareus-bridge"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    transactional_id_prefix: str = "icareus-bridge"
    # How long `run` waits at start for a broker to answer before it exits 4; 0 = for ever.
    startup_wait_seconds: float = Field(default=120.0, ge=0)
    extra: dict[str, str] = Field(default_factory=dict)

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every client of this process."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.extra)
        return conf


class TopicSettings(_Section):
    input: str = "crm.subscription.lifecycle.v1"
    requests: str = "icareus.provisioning.requests.v1"
    results: str = "icareus.provisioning.results.v1"
    dlq: str = "icareus.provisioning.dlq.v1"
    state: str = "icareus-bridge.state.v1"


class RetrySettings(_Section):
    max_attempts: int = Field(default=6, ge=1)
    max_total_seconds: float = Field(default=30.0, gt=0)
    initial_backoff_seconds: float = Field(default=0.2, gt=0)
    max_backoff_seconds: float = Field(default=5.0, gt=0)
    jitter_seconds: float = Field(default=0.2, ge=0)


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
    retry: RetrySettings = Field(default_factory=RetrySettings)
    operations: dict[str, IcareusOperation] = Field(default_factory=_default_operations)

    @model_validator(mode="after")
    def _one_key_source(self) -> IcareusSettings:
        if self.key is None and self.key_file is None:
            raise ValueError("one of icareus.key or icareus.key_file must be set")
        return self

    def secret_key(self) -> str:
        """The organization key, read from `key` or `key_file`; never logged."""
        if self.key is not None:
            return self.key.get_secret_value()
        assert self.key_file is not None
        try:
            return self.key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"icareus.key_file: cannot read {self.key_file}: {exc}") from exc


class Distributor(_Section):
    code: str = Field(min_length=1)
    name: str = ""
    allowed_products: list[str] = Field(default_factory=list)


class ProviderSettings(_Section):
    effective: bool = True
    max_viewing_points: int = Field(default=4, ge=1)
    distributors: list[Distributor] = Field(default_factory=list)
    service_mapping: dict[str, str] = Field(default_factory=dict)
    physical_goods_mapping: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_distributors(self) -> ProviderSettings:
        codes = [d.code for d in self.distributors]
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate distributor codes: {', '.join(dupes)}")
        return self


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
    # Results, dead letters and offsets become visible together, once per interval.
    commit_interval_ms: int = Field(default=100, ge=1)
    # Requests read but not finished (queued + in flight) before partitions are paused.
    max_queued: int = Field(default=2048, ge=1)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


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
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

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
        return (env_settings, init_settings)


def default_config_path() -> Path:
    """`config/bridge.yaml` of a source checkout, else the copy packaged with the code."""
    repo_copy = Path(__file__).resolve().parents[2] / "config" / "bridge.yaml"
    if repo_copy.is_file():
        return repo_copy
    return Path(str(resources.files("icareus_bridge").joinpath("bridge.yaml")))


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {key}: {err['msg']}")
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


__all__ = [
    "ConfigError",
    "Distributor",
    "IcareusSettings",
    "KafkaSettings",
    "ProviderSettings",
    "Settings",
    "TopicSettings",
    "load_settings",
]
