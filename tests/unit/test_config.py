"""The configuration loader: the embedded default file, environment overrides, and errors that
name the key (or `--config`) an operator has to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from icareus_bridge.config import ENV_PREFIX, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Overrides set in the developer's shell or CI must not leak into these tests.
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_loads() -> None:
    settings = load_settings()

    assert isinstance(settings, Settings)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.topics.input == "crm.subscription.lifecycle.v1"
    assert settings.topics.state == "icareus-bridge.state.v1"
    assert settings.icareus.secret_key() == "local-simulator-key"
    assert settings.provider.service_mapping["BASIC-TV"] == "1001"


def test_environment_overrides_the_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")

    settings = load_settings()

    assert settings.kafka.bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert settings.kafka.client_config()["bootstrap.servers"] == "broker-a:9092,broker-b:9092"
    # The rest of the section still comes from the file.
    assert settings.kafka.client_id == "icareus-bridge"


def test_nested_environment_override_keeps_the_sibling_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_ATTEMPTS", "3")

    settings = load_settings()

    assert settings.icareus.retry.max_attempts == 3
    assert settings.icareus.retry.max_total_seconds == 30.0
    assert settings.icareus.base_url == "http://127.0.0.1:8085/api"


def test_invalid_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__MAX_IN_FLIGHT", "0")

    with pytest.raises(ConfigError, match=r"icareus\.max_in_flight"):
        load_settings()


def test_invalid_value_in_the_file_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "icareus: {key: k, max_in_flight: -1}\n")

    with pytest.raises(ConfigError, match=r"icareus\.max_in_flight"):
        load_settings(path)


def test_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "icareus: {key: k}\nkafka: {bootstrap_server: typo:9092}\n")

    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server\b"):
        load_settings(path)


def test_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "icareus: {key: k}\nkafak: {bootstrap_servers: x:9092}\n")

    with pytest.raises(ConfigError, match="kafak"):
        load_settings(path)


def test_missing_file_names_the_config_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config") as info:
        load_settings(tmp_path / "absent.yaml")

    assert "absent.yaml" in str(info.value)


def test_file_that_is_not_a_mapping_names_the_config_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_settings(_write(tmp_path, "- just\n- a list\n"))


def test_icareus_key_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"icareus\.key"):
        load_settings(_write(tmp_path, "icareus: {base_url: 'http://x/api'}\n"))


def test_unknown_key_in_the_environment_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVER", "typo:9092")

    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server\b"):
        load_settings()


def test_misspelt_section_in_the_environment_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A single underscore where `__` belongs would otherwise be silently ignored.
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA_BOOTSTRAP_SERVERS", "typo:9092")

    with pytest.raises(ConfigError, match="ICAREUS_BRIDGE__KAFKA_BOOTSTRAP_SERVERS"):
        load_settings()
