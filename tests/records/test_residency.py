"""Residency tiers: where a checkpoint comes from, what is evicted, what loads cost."""
import pytest

from farm.errors import CheckpointError
from farm.records.residency import (
    GB,
    LoadCostModel,
    Residency,
    ResidencyReport,
    Tier,
    seed_load_s,
    size_class,
)

SD15, SDXL = int(1.7 * GB), int(5.1 * GB)


def test_seed_costs_are_designs_measured_figures():
    # DESIGN.md: SD1.5 UNet 1.17 s cold disk / 0.37 s page cache / 0.035 s pinned; SDXL 3.7 / 1.1 / 0.10.
    assert [seed_load_s(t, SD15) for t in (Tier.STORE, Tier.DISK, Tier.PINNED)] == [1.17, 0.37, 0.035]
    assert [seed_load_s(t, SDXL) for t in (Tier.STORE, Tier.DISK, Tier.PINNED)] == pytest.approx([3.7, 1.1, 0.10])
    assert seed_load_s(Tier.GPU, SDXL) == 0.0
    # Halfway in size, halfway in time.
    assert seed_load_s(Tier.STORE, (SD15 + SDXL) // 2) == pytest.approx((1.17 + 3.7) / 2, rel=1e-6)


def test_cost_model_is_an_ema_per_tier_and_size_class():
    costs = LoadCostModel(alpha=0.25)
    assert costs.estimate_s(Tier.DISK, SD15) == pytest.approx(0.37)  # unseen: the seed
    costs.observe(Tier.DISK, SD15, 0.85)  # 0.5 s/GB
    costs.observe(Tier.DISK, SD15, 1.70)  # 1.0 s/GB -> 0.5 + 0.25 * (1.0 - 0.5) = 0.625 s/GB
    assert costs.estimate_s(Tier.DISK, SD15) == pytest.approx(0.625 * 1.7)
    assert costs.estimate_s(Tier.DISK, int(1.5 * GB)) == pytest.approx(0.625 * 1.5)  # same class
    assert size_class(SDXL) != size_class(SD15)
    assert costs.estimate_s(Tier.DISK, SDXL) == pytest.approx(1.1)  # other class: still the seed
    assert costs.estimate_s(Tier.PINNED, SD15) == pytest.approx(0.035)  # other tier: still the seed


def test_source_is_the_nearest_tier_that_holds_it():
    res = Residency(gpu_bytes=6 * GB, pinned_bytes=20 * GB, disk_bytes=100 * GB)
    assert res.load("a", SDXL).source is Tier.STORE
    assert res.load("a", SDXL).source is Tier.GPU
    outcome = res.load("b", SDXL)  # VRAM holds one: a goes, but pinned RAM keeps it
    assert [(e.checkpoint, e.tier) for e in outcome.evicted] == [("a", Tier.GPU)]
    assert res.source("a") is Tier.PINNED
    assert res.report() == ResidencyReport(gpu=frozenset({"b"}), pinned=frozenset({"a", "b"}),
                                           disk=frozenset({"a", "b"}), gpu_free_bytes=6 * GB - SDXL,
                                           evict_order=(("b", SDXL),))


def test_eviction_is_least_recently_used_when_costs_are_equal():
    res = Residency(gpu_bytes=3 * SD15, pinned_bytes=100 * GB, disk_bytes=100 * GB)
    for name in ("a", "b", "c"):
        res.load(name, SD15)
    res.load("a", SD15)  # a is used again: b is now the oldest
    assert [e.checkpoint for e in res.load("d", SD15).evicted if e.tier is Tier.GPU] == ["b"]
    assert [e.checkpoint for e in res.load("e", SD15).evicted if e.tier is Tier.GPU] == ["c"]


def test_eviction_weighs_recency_by_reload_cost():
    costs = LoadCostModel()
    costs.observe(Tier.PINNED, SD15, 100.0 * 1.7)  # SD1.5-sized files reload very slowly here
    res = Residency(gpu_bytes=int(7 * GB), pinned_bytes=100 * GB, disk_bytes=100 * GB, costs=costs)
    res.load("slow", SD15)
    res.load("fast", SDXL)  # used more recently, but cheap to bring back
    evicted = [e.checkpoint for e in res.load("new", int(1.5 * GB)).evicted if e.tier is Tier.GPU]
    assert evicted == ["fast"]


def test_keep_is_evicted_last_and_reports_predict_the_victims():
    res = Residency(gpu_bytes=2 * SDXL, pinned_bytes=100 * GB, disk_bytes=100 * GB)
    res.load("planned", SDXL)
    res.load("other", SDXL)
    res.load("planned", SDXL)  # planned is the most recent anyway; make it the oldest:
    res.load("other", SDXL)
    keep = frozenset({"planned"})
    predicted = res.report().victims("new", SDXL, keep)
    outcome = res.load("new", SDXL, keep)
    assert predicted == ("other",)
    assert [e.checkpoint for e in outcome.evicted if e.tier is Tier.GPU] == ["other"]
    assert res.report().victims("x", SDXL) == ("planned",)  # without keep: the oldest


def test_after_load_matches_the_real_report():
    res = Residency(gpu_bytes=2 * SDXL, pinned_bytes=100 * GB, disk_bytes=100 * GB)
    res.load("a", SDXL)
    res.load("b", SDXL)
    expected = res.report().after_load("c", SDXL)
    res.load("c", SDXL)
    actual = res.report()
    assert (expected.gpu, expected.gpu_free_bytes) == (actual.gpu, actual.gpu_free_bytes)
    assert [name for name, _ in expected.evict_order] == [name for name, _ in actual.evict_order]


def test_a_checkpoint_larger_than_vram_is_refused():
    res = Residency(gpu_bytes=4 * GB, pinned_bytes=100 * GB, disk_bytes=100 * GB)
    with pytest.raises(CheckpointError, match="VRAM budget"):
        res.load("big", SDXL)


def test_memory_set_aside_shrinks_the_budget_and_evicts_what_no_longer_fits():
    """A compiled UNet's stage takes device memory for good (farm.models.compiled_stage)."""
    res = Residency(gpu_bytes=3 * SD15, pinned_bytes=100 * GB, disk_bytes=100 * GB)
    for name in ("a", "b", "c"):
        res.load(name, SD15)
    res.load("a", SD15)  # b is now the oldest
    assert res.set_aside(Tier.GPU, SD15, keep=frozenset({"b"})) == ["c"]  # b is kept: the next oldest goes
    assert res.report().gpu == frozenset({"a", "b"}) and res.report().gpu_free_bytes == 0
    assert res.source("c") is Tier.PINNED
    # nothing but kept checkpoints left: they stay, over budget, until their batch ends
    assert res.set_aside(Tier.GPU, SD15, keep=frozenset({"a", "b"})) == []
    assert res.report().gpu == frozenset({"a", "b"})
    assert [e.checkpoint for e in res.load("d", SD15).evicted if e.tier is Tier.GPU] == ["b", "a"]
