"""CPU time and RSS of a server's processes, read from Linux ``/proc`` (for the benchmarks' reports)."""

from __future__ import annotations

import os


def session_stats(session_id: int) -> dict[int, list[str]]:
    """``/proc/<pid>/stat`` fields after the command name, of every process in the session."""
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 (session) after pid and comm
            found[int(entry)] = fields
    return found


def session_cpu_seconds(session_id: int | None) -> tuple[float, float]:
    """CPU seconds (user, system) of every process in the server's session (Linux /proc)."""
    if session_id is None:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    stats = session_stats(session_id).values()
    return sum(int(f[11]) for f in stats) / tick, sum(int(f[12]) for f in stats) / tick


def session_rss_kib(session_id: int) -> dict[int, int]:
    """VmRSS (KiB) of every process in the session."""
    out: dict[int, int] = {}
    for pid in session_stats(session_id):
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
        except (OSError, ValueError):
            continue
    return out
