"""Runs planned workflows with a node-output cache (no Ray here)."""
from farm.engine.cache import CacheLimits, OutputCache
from farm.engine.context import JobContext, RunContext
from farm.engine.executor import Engine, JobOutcome, PlannedJob

__all__ = ["CacheLimits", "Engine", "JobContext", "JobOutcome", "OutputCache", "PlannedJob", "RunContext"]
