"""The garbage collector's pauses, as a worker reports them to the bench."""
from __future__ import annotations

import gc

from farm.worker import gc_pauses
from farm.worker.gc_pauses import GcPauses, process_gc_pauses


def test_collections_are_counted_per_generation_and_long_ones_listed(monkeypatch):
    monkeypatch.setattr(gc_pauses, "LONG_PAUSE_S", 0.0)  # every pause is a long one here
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.uninstall()
    gc.collect()  # after uninstall: not counted
    report = pauses.report()
    assert report["generations"]["0"]["count"] >= 1 and report["generations"]["2"]["count"] >= 1
    assert report["generations"]["2"]["seconds"] >= report["generations"]["2"]["longest_s"] > 0
    assert sorted(gen for _, _, gen in report["long_pauses"])[-1] == 2
    assert len(report["long_pauses"]) == sum(g["count"] for g in report["generations"].values())


def test_one_instance_per_process_however_many_workers():
    first = process_gc_pauses()
    assert process_gc_pauses() is first
    assert gc.callbacks.count(first._callback) == 1
