"""CPU time of a server's processes, read from Linux ``/proc`` (for the benchmarks' reports)."""

from __future__ import annotations

import os


def session_cpu_seconds(session_id: int | None) -> tuple[float, float]:
    """CPU seconds (user, system) of every process in the server's session (Linux /proc)."""
    if session_id is None:
        return float("nan"), float("nan")
    user = system = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 (session) after pid and comm
            user += int(fields[11])
            system += int(fields[12])
    return user / tick, system / tick
