"""Where the organization key comes from, and the cross-checks that refuse a configuration
which would run but do nonsense: each refusal names the key, and the environment variable when
the bad value came from one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icareus_bridge.config import ENV_PREFIX, ConfigError, default_config_path, load_settings

DEMO_KEY = "local-simulator-key"  # the embedded config's key, for the loopback simulator only


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _default_config() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    return loaded


def _write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _with(section: str, **values: object) -> dict[str, object]:
    """The embedded default configuration with some keys of one section changed."""
    config = _default_config()
    current = config[section]
    assert isinstance(current, dict)
    config[section] = {**current, **values}
    return config


def _key_file(tmp_path: Path, text: str = "production-key\n") -> Path:
    path = tmp_path / "organization.key"
    path.write_text(text, encoding="utf-8")
    return path


# --- defect 1: where the key comes from --------------------------------------------------------


def test_a_key_file_from_the_environment_wins_over_the_files_demo_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY_FILE", str(_key_file(tmp_path)))

    settings = load_settings()

    assert settings.icareus.secret_key() == "production-key"


def test_a_key_from_the_environment_wins_over_the_files_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _default_config()
    icareus = config["icareus"]
    assert isinstance(icareus, dict)
    del icareus["key"]
    icareus["key_file"] = str(_key_file(tmp_path))
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY", "from-the-environment")

    settings = load_settings(_write(tmp_path, config))

    assert settings.icareus.secret_key() == "from-the-environment"


def test_a_key_from_the_environment_wins_over_the_files_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY", "from-the-environment")

    assert load_settings().icareus.secret_key() == "from-the-environment"


def test_key_and_key_file_in_the_file_are_refused_naming_both(tmp_path: Path) -> None:
    config = _with("icareus", key="k", key_file=str(_key_file(tmp_path)))

    with pytest.raises(ConfigError) as refused:
        load_settings(_write(tmp_path, config))

    assert "icareus.key" in str(refused.value) and "icareus.key_file" in str(refused.value)


def test_key_and_key_file_both_in_the_environment_are_refused_naming_both_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY", "k")
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY_FILE", str(_key_file(tmp_path)))

    with pytest.raises(ConfigError) as refused:
        load_settings()

    message = str(refused.value)
    assert "icareus.key" in message and "icareus.key_file" in message
    assert "ICAREUS_BRIDGE__ICAREUS__KEY," in message or "ICAREUS_BRIDGE__ICAREUS__KEY " in message
    assert "ICAREUS_BRIDGE__ICAREUS__KEY_FILE" in message
    assert "production-key" not in message and "'k'" not in message


def test_the_demo_key_with_a_remote_base_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__BASE_URL", "https://suite.icareus.example/api")

    with pytest.raises(ConfigError) as refused:
        load_settings()

    message = str(refused.value)
    assert "icareus.key" in message and "demo key" in message
    assert "suite.icareus.example" in message
    assert DEMO_KEY not in message


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8085/api", "http://localhost:9000/api", "http://[::1]:8085/api"],
)
def test_the_demo_key_signs_calls_to_a_loopback_simulator(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__BASE_URL", base_url)

    assert load_settings().icareus.secret_key() == DEMO_KEY


def test_the_demo_key_in_a_key_file_with_a_remote_base_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY_FILE", str(_key_file(tmp_path, DEMO_KEY)))
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__BASE_URL", "https://suite.icareus.example/api")

    with pytest.raises(ConfigError, match="demo key"):
        load_settings()


def test_a_missing_key_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY_FILE", str(tmp_path / "absent.key"))

    with pytest.raises(ConfigError) as refused:
        load_settings()

    message = str(refused.value)
    assert "icareus.key_file" in message and "absent.key" in message
    assert "ICAREUS_BRIDGE__ICAREUS__KEY_FILE" in message


def test_an_empty_key_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY_FILE", str(_key_file(tmp_path, " \n")))

    with pytest.raises(ConfigError, match=r"icareus\.key_file.*empty"):
        load_settings()


def test_an_empty_key_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__KEY", "")

    with pytest.raises(ConfigError, match=r"icareus\.key\b.*empty"):
        load_settings()


def _run_bridge(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Kafka at an address nobody listens on: any Kafka work would take seconds and exit 4.
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    clean.update({"ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})
    return subprocess.run(
        [sys.executable, "-m", "icareus_bridge.cli", "run"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_run_with_a_missing_key_file_exits_2_before_any_kafka_work(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "key"
    done = _run_bridge(tmp_path, {"ICAREUS_BRIDGE__ICAREUS__KEY_FILE": str(missing)})

    assert done.returncode == 2, done.stderr
    assert "icareus.key_file" in done.stderr and str(missing) in done.stderr
    assert "Traceback" not in done.stderr
    assert "topic" not in done.stdout and "127.0.0.1:1" not in done.stderr


def test_run_with_the_demo_key_and_a_remote_icareus_exits_2(tmp_path: Path) -> None:
    done = _run_bridge(
        tmp_path, {"ICAREUS_BRIDGE__ICAREUS__BASE_URL": "https://suite.icareus.example/api"}
    )

    assert done.returncode == 2, done.stderr
    assert "demo key" in done.stderr and "Traceback" not in done.stderr
    assert DEMO_KEY not in done.stderr


# --- defect 8: cross-checks ----------------------------------------------------------------------


def test_two_topics_with_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    config = _with("topics", results="icareus.provisioning.requests.v1")

    with pytest.raises(ConfigError) as refused:
        load_settings(_write(tmp_path, config))

    assert "topics.results" in str(refused.value) and "topics.requests" in str(refused.value)


def test_a_topic_name_from_the_environment_clashing_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__TOPICS__DLQ", "crm.subscription.lifecycle.v1")

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert "topics.dlq" in str(refused.value)
    assert "environment variable ICAREUS_BRIDGE__TOPICS__DLQ" in str(refused.value)


def test_allowed_products_must_be_mapped_product_codes(tmp_path: Path) -> None:
    config = _default_config()
    provider = config["provider"]
    assert isinstance(provider, dict)
    provider["distributors"][2]["allowed_products"] = ["BASIC-TV", "KIDZ"]

    with pytest.raises(ConfigError) as refused:
        load_settings(_write(tmp_path, config))

    message = str(refused.value)
    assert "provider.distributors.2.allowed_products" in message
    assert "KIDZ" in message and "service_mapping" in message and "BASIC-TV," not in message


def test_initial_backoff_above_max_backoff_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__RETRY__INITIAL_BACKOFF_SECONDS", "9")

    with pytest.raises(ConfigError) as refused:
        load_settings()

    message = str(refused.value)
    assert "icareus.retry.initial_backoff_seconds" in message
    assert "icareus.retry.max_backoff_seconds" in message
    assert "ICAREUS_BRIDGE__ICAREUS__RETRY__INITIAL_BACKOFF_SECONDS" in message


def test_initial_backoff_equal_to_max_backoff_is_accepted(tmp_path: Path) -> None:
    config = _default_config()
    icareus = config["icareus"]
    assert isinstance(icareus, dict)
    icareus["retry"] = {**icareus["retry"], "initial_backoff_seconds": 5.0}

    assert load_settings(_write(tmp_path, config)).icareus.retry.initial_backoff_seconds == 5.0


@pytest.mark.parametrize(
    "base_url",
    ["127.0.0.1:8085/api", "ftp://127.0.0.1/api", "http:///api", "localhost", "http://h:99999/"],
)
def test_base_url_must_be_an_http_url(tmp_path: Path, base_url: str) -> None:
    config = _with("icareus", base_url=base_url)

    with pytest.raises(ConfigError, match=r"icareus\.base_url: .*http"):
        load_settings(_write(tmp_path, config))


def test_a_bad_base_url_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__BASE_URL", "suite.icareus.example/api")

    with pytest.raises(ConfigError) as refused:
        load_settings()

    assert "icareus.base_url" in str(refused.value)
    assert "environment variable ICAREUS_BRIDGE__ICAREUS__BASE_URL" in str(refused.value)


def test_a_bad_value_from_the_file_does_not_blame_the_environment(tmp_path: Path) -> None:
    config = _with("icareus", max_in_flight=0)

    with pytest.raises(ConfigError) as refused:
        load_settings(_write(tmp_path, config))

    assert "icareus.max_in_flight" in str(refused.value)
    assert "environment" not in str(refused.value)


def test_a_malformed_json_section_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICAREUS_BRIDGE__ICAREUS__RETRY", "{not json")

    with pytest.raises(ConfigError, match="ICAREUS_BRIDGE__ICAREUS__RETRY"):
        load_settings()


def test_the_embedded_default_passes_every_check() -> None:
    settings = load_settings()

    assert settings.icareus.base_url == "http://127.0.0.1:8085/api"
    assert len({getattr(settings.topics, n) for n in type(settings.topics).model_fields}) == 6
