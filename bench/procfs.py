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


def children(pid: int) -> list[int]:
    """The process's children (of all its threads)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def process_tree(root: int) -> list[int]:
    """The process and all its descendants."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children(pid)
    return pids


def tree_pss_kib(root: int, leave_out: frozenset[str] = frozenset({"time"})) -> int:
    """The PSS of the process and its descendants summed (pages they share counted once),
    leaving out wrappers such as ``/usr/bin/time`` by command name."""
    total = 0
    for pid in process_tree(root):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if raw[raw.find("(") + 1 : raw.rfind(")")] not in leave_out:
            total += pss_kib(pid)
    return total
