"""The layout's rules, checked on the source: each package's public surface resolves, only
`kafka/` touches confluent-kafka, `core/` loads no configuration loader, and functions stay
short (docs/CONTRIBUTING.md)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "icareus_bridge"
PACKAGES = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
MAX_FUNCTION_LINES = 80
# "path:function" of declarative tables allowed to be longer (none today).
TABLES: set[str] = set()


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_where_it_sits_and_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(f"icareus_bridge.{package}")
    assert (module.__doc__ or "").strip(), f"{package}/__init__.py has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported, f"{package}/__init__.py has no __all__"
    for name in exported:  # a name, or a submodule (ops exports its commands)
        if (SRC / package / f"{name}.py").is_file():
            importlib.import_module(f"icareus_bridge.{package}.{name}")
        assert getattr(module, name) is not None, f"icareus_bridge.{package}.{name}"
    # An unknown name is an AttributeError (so `from package import submodule` still works).
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


def test_only_the_kafka_package_imports_confluent_kafka() -> None:
    offenders = []
    for path in _modules():
        if path.relative_to(SRC).parts[0] == "kafka":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "confluent_kafka" or n.startswith("confluent_kafka.") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_the_core_loads_no_configuration_loader_and_no_kafka_client() -> None:
    code = (
        "import sys, icareus_bridge.core.plan, icareus_bridge.core.feedback, "
        "icareus_bridge.core.validation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('yaml', 'pydantic_settings', 'dotenv', 'confluent_kafka') "
        "or m == 'icareus_bridge.config'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(SRC)}:{node.name}"
                if lines > MAX_FUNCTION_LINES and where not in TABLES:
                    long.append(f"{where} ({lines} lines)")
    assert long == []
