"""Runs planned workflows with a node-output cache (no Ray here).

The names below are imported on first use (PEP 562): the executor imports every node, and
so torch, which a process that needs only farm.engine.images (the output writer) never
loads."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farm.engine.cache import CacheLimits, OutputCache
    from farm.engine.context import JobContext, RunContext
    from farm.engine.executor import Engine, JobOutcome, PlannedJob

__all__ = ["CacheLimits", "Engine", "JobContext", "JobOutcome", "OutputCache", "PlannedJob", "RunContext"]


def __getattr__(name: str):
    if name in ("CacheLimits", "OutputCache"):
        from farm.engine import cache as module
    elif name in ("JobContext", "RunContext"):
        from farm.engine import context as module
    elif name in ("Engine", "JobOutcome", "PlannedJob"):
        from farm.engine import executor as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # looked up once
    return value
