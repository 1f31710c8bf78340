"""The host a number was measured on: the one reader of the CPU's model name, which every benchmark record, latency
table and cached ``auto`` choice names (CPUs differ; a number without its host is not comparable)."""

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name where Linux tells it (/proc/cpuinfo; ``platform.processor()`` is often just "x86_64")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


__all__ = ["cpu_name"]
