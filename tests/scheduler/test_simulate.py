"""`farm simulate`: its JSON answer, its cost figures, its lower bound."""
import json
import math

import pytest

from farm.scheduler.costs import ARCHS, batch_s, interpolate, job_estimates
from farm.scheduler.simulate import ideal_makespan_s, lower_bound_loads
from farm.scheduler.simulate_cli import main
from farm.scheduler.trace import Template, TraceJob, TraceSpec, describe, make_trace


def test_small_run_prints_the_json_shape_and_the_farm_loads_least(capsys):
    assert main(["--jobs", "600", "--workers", "4", "--seed", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"trace", "lower_bound_loads", "policies"}
    assert set(answer["policies"]) == {"farm", "round_robin", "least_loaded", "pressure"}
    for figures in answer["policies"].values():
        assert set(figures) == {"model_loads", "makespan_s", "gpu_busy", "p50_wait_s", "p99_wait_s", "lora_switches"}
        assert 0 < figures["gpu_busy"] <= 1 and figures["p50_wait_s"] <= figures["p99_wait_s"]
        # Nothing finishes before the last job has arrived.
        assert figures["makespan_s"] >= answer["trace"]["span_s"]
    assert answer["trace"]["jobs"] == 600 and isinstance(answer["lower_bound_loads"], int)
    loads = {name: figures["model_loads"] for name, figures in answer["policies"].items()}
    assert loads["farm"] * 3 < loads["least_loaded"]


def test_table_output_and_bad_policy_name(capsys):
    assert main(["--jobs", "50", "--workers", "2", "--policies", "farm,pressure"]) == 0
    out = capsys.readouterr().out
    assert "lower bound on model loads" in out and "pressure" in out and "round_robin" not in out
    assert main(["--jobs", "50", "--policies", "fifo"]) == 2


def test_step_times_are_designs_figures_interpolated():
    sd15 = ARCHS["sd15"]
    assert interpolate(sd15.unet_step_ms, 4) == 42.6
    assert interpolate(sd15.unet_step_ms, 2) == pytest.approx(32.6 + (42.6 - 32.6) / 3)
    assert interpolate(ARCHS["sdxl"].unet_step_ms, 6) == pytest.approx((155 + 298) / 2)
    # 25 SD1.5 steps at batch 8, UNet only, is 5.86 img/s in DESIGN.md: 8 / (25 * 54.6 ms).
    assert 8 / (25 * interpolate(sd15.unet_step_ms, 8) / 1000) == pytest.approx(5.86, abs=0.01)
    # Batch 1 plus decode, and the chord from batch 1 to 8 for each further job.
    alone, extra = job_estimates(sd15, 20, 8)
    assert alone == pytest.approx((20 * 32.6 + 24.0) / 1000)
    assert alone + 7 * extra == pytest.approx(batch_s(sd15, 20, 8))


def _template(name: str, image_s: float) -> Template:
    return Template(f"{name}|k", name, ARCHS["sd15"], 20, 1.0, 0.1, image_s)


def test_lower_bound_by_hand():
    # Two workers, everything submitted at t=0: T* = total work / workers = (30 + 6) / 2 = 18 s.
    # A (30 s of work) needs ceil(30 / 18) = 2 workers, B (6 s) one: 3 loads at least.
    a, b = _template("A", 3.0), _template("B", 2.0)
    trace = [TraceJob(f"a{i}", 0.0, a) for i in range(10)] + [TraceJob(f"b{i}", 0.0, b) for i in range(3)]
    assert ideal_makespan_s(2, trace) == pytest.approx(18.0)
    assert lower_bound_loads(2, trace) == 3
    # A late arrival stretches T*: a job of B at t=100 cannot finish before 102 s, so A's
    # 30 s fit on one worker.
    late = trace + [TraceJob("late", 100.0, b)]
    assert ideal_makespan_s(2, late) == pytest.approx(102.0)
    assert lower_bound_loads(2, late) == 2


def test_trace_is_deterministic_and_offers_the_asked_load():
    spec = TraceSpec(jobs=4000, workers=4, load=0.6, seed=5)
    trace = make_trace(spec)
    assert [(j.job_id, j.arrival_s) for j in trace[:50]] == \
           [(j.job_id, j.arrival_s) for j in make_trace(spec)[:50]]
    info = describe(spec, trace)
    offered = info["work_s"] / (info["span_s"] * spec.workers)
    assert offered == pytest.approx(0.6, rel=0.1)
    counts = info["jobs_per_checkpoint"]
    assert max(counts, key=counts.get).startswith("ckpt0-sdxl")  # Zipf rank 0 is the hottest
    assert sum(counts.values()) == 4000 and not math.isnan(info["span_s"])


@pytest.mark.parametrize("flags, named", [(["--workers", "0"], "--workers 0"), (["--jobs", "-5"], "--jobs -5"),
                                          (["--max-batch", "0"], "--max-batch 0"), (["--load", "0"], "--load 0.0"),
                                          (["--load", "nan"], "--load nan"), (["--zipf", "-1"], "--zipf -1.0")])
def test_arguments_that_cannot_make_a_trace_are_one_line_and_exit_2(capsys, flags, named):
    assert main(["--jobs", "20", *flags]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith(named) and "\n" not in out and "Traceback" not in out
