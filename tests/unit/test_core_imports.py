"""The core is pure: importing it loads no configuration loader (YAML, pydantic-settings,
dotenv, the bridge's config module), and the configuration re-exports its domain settings."""

from __future__ import annotations

import subprocess
import sys

import icareus_bridge.config as config
from icareus_bridge.core import provider

LOADERS = ("yaml", "pydantic_settings", "dotenv")


def test_importing_the_core_loads_no_configuration_loader() -> None:
    code = (
        "import sys\n"
        "import icareus_bridge.core.plan, icareus_bridge.core.feedback\n"
        "import icareus_bridge.core.validation, icareus_bridge.core.provider\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {LOADERS!r}"
        " or m == 'icareus_bridge.config'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_configuration_uses_the_cores_provider_settings() -> None:
    assert config.ProviderSettings is provider.ProviderSettings
    assert config.Distributor is provider.Distributor
    assert config.CrossCheckError is provider.CrossCheckError
    assert config.Settings.model_fields["provider"].annotation is provider.ProviderSettings
