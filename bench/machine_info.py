"""The machine line of every benchmark row: CPU model, core count and Python version."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(setting: str) -> str:
    """`<cpu>, <n> cpu, Python <x.y.z>, <setting>` — setting says how the run used the CPUs."""
    return f"{cpu_model()}, {os.cpu_count()} cpu, Python {platform.python_version()}, {setting}"
