"""Placement counts a fetch from the model source: a file on no tier of a worker, and not
on its node, costs its size over the source's bandwidth more than a cold load; a worker
that reports no file list (no source configured) pays no fetch."""
from __future__ import annotations

from farm.records.residency import GB, LoadCostModel, ResidencyReport, Tier
from farm.scheduler.costs import fetch_s
from farm.scheduler.fleet import Fleet

SIZE = int(2 * GB)


def test_a_file_the_node_lacks_costs_a_fetch_more_than_a_disk_or_cold_load():
    costs = LoadCostModel()
    fleet = Fleet(8, costs, fetch_bytes_per_s=100e6)
    here, there, plain = (fleet.add_worker(w) for w in ("here", "there", "plain"))
    fleet.set_residency(here, ResidencyReport(on_node=frozenset({"a.safetensors"})))
    fleet.set_residency(there, ResidencyReport(on_node=frozenset()))
    fleet.set_residency(plain, ResidencyReport())  # no source: every file is on every node
    cold = costs.estimate_s(Tier.STORE, SIZE)
    assert fleet.switch_s(here, "a.safetensors", SIZE) == cold
    assert fleet.switch_s(plain, "a.safetensors", SIZE) == cold
    assert fleet.switch_s(there, "a.safetensors", SIZE) == cold + SIZE / 100e6
    assert fleet.switch_s(there, "a.safetensors", SIZE) > costs.estimate_s(Tier.DISK, SIZE)
    # held in a tier (it was fetched and loaded since): no fetch, whatever the old list says
    fleet.set_residency(there, ResidencyReport(disk=frozenset({"a.safetensors"}), on_node=frozenset()))
    assert fleet.switch_s(there, "a.safetensors", SIZE) == costs.estimate_s(Tier.DISK, SIZE)


def test_fetch_seconds_follow_size_and_bandwidth():
    assert fetch_s(SIZE, 200e6) == SIZE / 200e6
    assert fetch_s(2 * SIZE, 200e6) == 2 * fetch_s(SIZE, 200e6)
    assert fetch_s(SIZE, 0) == 0.0  # an unmeasured source: placement only orders by load
