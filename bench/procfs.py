"""What Linux's /proc says of a process's memory, for the benchmarks' peak figures."""

from __future__ import annotations

from pathlib import Path


def _kib(pid: int, file: str, key: str) -> int:
    """The value of ``key`` (in KiB) in ``/proc/<pid>/<file>``; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size so far."""
    return _kib(pid, "status", "VmHWM:")


def pss_kib(pid: int) -> int:
    """The process's proportional set size: its private pages plus its share of shared ones."""
    return _kib(pid, "smaps_rollup", "Pss:")
