"""The kafka section's security settings: what `client_config()` gives librdkafka, the checks
at start (each error names the key), and the SASL password kept out of repr, errors and help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icareus_bridge.config import ENV_PREFIX, ConfigError, default_config_path, load_settings

PASSWORD = "Sc-ram-pass-7781"  # recognisable: no output may contain it
SCRIPT = Path(sys.executable).parent / "icareus-bridge"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")  # existence is checked
    return path


def _config(tmp_path: Path, **kafka: object) -> Path:
    cfg = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    cfg["kafka"].update(kafka)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _sasl_ssl(ca: Path, **more: object) -> dict[str, object]:
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "bridge",
        "ssl_ca_location": str(ca),
        **more,
    }


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_default_is_plaintext_without_security_settings() -> None:
    conf = load_settings().kafka.client_config()

    assert conf["security.protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl.", "ssl.")) for k in conf)


def test_sasl_ssl_with_a_password_gives_librdkafka_every_setting(
    tmp_path: Path, ca_file: Path
) -> None:
    settings = load_settings(_config(tmp_path, **_sasl_ssl(ca_file, sasl_password=PASSWORD)))

    assert settings.kafka.client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "client.id": "icareus-bridge",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bridge",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca_file),
    }


def test_password_file_is_read_without_its_trailing_newline(tmp_path: Path, ca_file: Path) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")

    settings = load_settings(
        _config(tmp_path, **_sasl_ssl(ca_file, sasl_password_file=str(secret)))
    )

    assert settings.kafka.client_config()["sasl.password"] == PASSWORD
    secret.write_text("rotated-password\n", encoding="utf-8")
    assert settings.kafka.client_config()["sasl.password"] == "rotated-password"


def test_mutual_tls_settings_reach_librdkafka(tmp_path: Path, ca_file: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("c", encoding="utf-8")
    key.write_text("k", encoding="utf-8")
    path = _config(
        tmp_path,
        security_protocol="SSL",
        ssl_ca_location=str(ca_file),
        ssl_certificate_location=str(cert),
        ssl_key_location=str(key),
        ssl_key_password="key-pass-55",
    )

    conf = load_settings(path).kafka.client_config()

    assert conf["ssl.certificate.location"] == str(cert)
    assert conf["ssl.key.location"] == str(key)
    assert conf["ssl.key.password"] == "key-pass-55"
    assert not any(k.startswith("sasl.") for k in conf)


def test_password_and_password_file_in_one_source_is_an_error_naming_both(
    tmp_path: Path, ca_file: Path
) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text(PASSWORD, encoding="utf-8")
    path = _config(
        tmp_path, **_sasl_ssl(ca_file, sasl_password=PASSWORD, sasl_password_file=str(secret))
    )

    message = _load_error(path)

    assert "kafka.sasl_password:" in message and "kafka.sasl_password_file" in message
    assert PASSWORD not in message


def test_password_file_from_the_environment_replaces_the_files_password(
    tmp_path: Path, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text("from-the-secret-file", encoding="utf-8")
    path = _config(tmp_path, **_sasl_ssl(ca_file, sasl_password=PASSWORD))
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD_FILE", str(secret))

    settings = load_settings(path)

    assert settings.kafka.sasl_password is None
    assert settings.kafka.client_config()["sasl.password"] == "from-the-secret-file"


def test_both_in_the_environment_is_an_error_naming_the_variables(
    tmp_path: Path, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD_FILE", str(secret))

    message = _load_error(_config(tmp_path, **_sasl_ssl(ca_file)))

    assert "kafka.sasl_password:" in message
    assert "ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD" in message
    assert "ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD_FILE" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("content", [None, "", "\n"], ids=["missing", "empty", "newline-only"])
def test_unusable_password_file_is_a_start_up_error_naming_the_key(
    tmp_path: Path, ca_file: Path, content: str | None
) -> None:
    secret = tmp_path / "kafka.password"
    if content is not None:
        secret.write_text(content, encoding="utf-8")

    message = _load_error(_config(tmp_path, **_sasl_ssl(ca_file, sasl_password_file=str(secret))))

    assert "kafka.sasl_password_file:" in message
    assert str(secret) in message


@pytest.mark.parametrize(
    ("kafka", "key"),
    [
        ({"sasl_mechanism": None}, "kafka.sasl_mechanism:"),
        ({"sasl_username": ""}, "kafka.sasl_username:"),
        ({}, "kafka.sasl_password:"),  # neither password nor file
        ({"sasl_mechanism": "GSSAPI", "sasl_password": PASSWORD}, "kafka.sasl_mechanism:"),
        ({"sasl_password": ""}, "kafka.sasl_password:"),
        ({"ssl_ca_location": "/nonexistent/ca.pem", "sasl_password": PASSWORD}, "ssl_ca_location"),
        (
            {"ssl_certificate_location": "/etc/hostname", "sasl_password": PASSWORD},
            "kafka.ssl_certificate_location:",
        ),
        ({"extra": {"sasl.password": PASSWORD}, "sasl_password": PASSWORD}, "kafka.extra:"),
    ],
)
def test_incomplete_sasl_ssl_settings_name_the_key(
    tmp_path: Path, ca_file: Path, kafka: dict[str, object], key: str
) -> None:
    message = _load_error(_config(tmp_path, **{**_sasl_ssl(ca_file), **kafka}))

    assert key in message
    assert PASSWORD not in message


def test_sasl_settings_without_a_sasl_protocol_are_refused(tmp_path: Path) -> None:
    message = _load_error(_config(tmp_path, sasl_username="bridge", sasl_password=PASSWORD))

    assert "kafka.sasl_username:" in message and "kafka.security_protocol" in message
    assert PASSWORD not in message


def test_password_is_not_in_the_settings_repr(tmp_path: Path, ca_file: Path) -> None:
    settings = load_settings(_config(tmp_path, **_sasl_ssl(ca_file, sasl_password=PASSWORD)))

    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.kafka)
    assert PASSWORD not in settings.model_dump_json()


@pytest.mark.parametrize("command", ["run", "replay", "archive"])
def test_help_never_shows_the_password(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "ICAREUS_BRIDGE__KAFKA__SASL_PASSWORD": PASSWORD}
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "icareus_bridge.cli"]

    result = subprocess.run(
        [*cmd, command, "--help"], capture_output=True, text=True, timeout=60, env=env
    )

    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
