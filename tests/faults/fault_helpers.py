"""Helpers of the fault tests (a module of its own: conftest modules are not importable by name)."""
from __future__ import annotations

import os

import ray


def pid_of(handle) -> int:
    """The process behind an actor (__ray_call__ runs a function in the actor itself)."""
    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def assert_ended_once(farm, prompt_ids: list[str]) -> None:
    """Every accepted job ended exactly once: one history entry each, none left queued."""
    history = [h.prompt_id for h in farm.history() if h.prompt_id in set(prompt_ids)]
    assert sorted(history) == sorted(prompt_ids), "a job was lost or recorded twice"
    assert not {j.prompt_id for j in farm.status().queue.pending} & set(prompt_ids)
