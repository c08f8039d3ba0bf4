"""Helpers for tests that kill a process group: which processes are still in a session."""
from __future__ import annotations

import os


def session_pids(leader: int) -> list[int]:
    """Processes in the session led by `leader` (the leader itself excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != leader:
            try:
                if os.getsid(int(entry)) == leader:
                    pids.append(int(entry))
            except OSError:  # ended meanwhile
                pass
    return pids
