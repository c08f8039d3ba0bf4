"""Fault tests run against the session's Ray farm (tests/conftest.py's `ray_farm`) and put
it back as they found it: both workers up, an empty queue, no limits left on a process."""
from __future__ import annotations

import pytest


@pytest.fixture
def farm(ray_farm):
    ray_farm.wait_for_workers(2, timeout=300)
    yield ray_farm
    ray_farm.wait_for_workers(2, timeout=300)  # a killed worker is replaced before the next test
