"""`farm simulate --autoscale`: a fleet that follows the queue, against the fixed one."""
import json

import pytest

from farm.scheduler.autoscale import ScaleKnobs
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.simulate import run_policy
from farm.scheduler.simulate_autoscale import (
    AutoscaledSimulation,
    AutoscaleSpec,
    fixed_cost,
)
from farm.scheduler.simulate_cli import main
from farm.scheduler.trace import TraceSpec, make_trace


def test_a_quiet_farm_costs_less_autoscaled_and_every_job_runs_once():
    spec = TraceSpec(jobs=800, workers=4, seed=5, load=0.2)
    trace = make_trace(spec)
    scaling = AutoscaleSpec(ScaleKnobs(max_gpus=4, target_backlog_s=30, scale_down_delay_s=60), start_delay_s=45)
    sim = AutoscaledSimulation(spec, trace, FarmPolicy(), scaling)
    sim.run()
    cost = sim.cost()
    assert len(sim.waits) == len(trace) and not sim.running and not sim.booting
    assert 1 <= cost.peak_gpus <= 4
    assert min(sim.waits) >= 0 and max(sim.waits) >= 45  # the first job waits for the first GPU to boot
    assert sim.busy_s <= sim.paid_s
    fixed = fixed_cost(4, run_policy(spec, trace, FarmPolicy())[0])
    assert cost.gpu_hours < fixed.gpu_hours
    assert cost.p99_wait_s >= fixed.p99_wait_s  # what the saving costs


def test_a_fleet_held_at_its_size_matches_the_fixed_fleet():
    spec = TraceSpec(jobs=300, workers=3, seed=2)
    trace = make_trace(spec)
    fixed, _ = run_policy(spec, trace, FarmPolicy())
    held = AutoscaleSpec(ScaleKnobs(max_gpus=3, min_gpus=3, scale_down_delay_s=0), start_delay_s=0)
    sim = AutoscaledSimulation(spec, trace, FarmPolicy(), held)
    result, _ = sim.run()
    assert (result.model_loads, result.makespan_s, result.p99_wait_s) == \
        (fixed.model_loads, fixed.makespan_s, fixed.p99_wait_s)
    assert sim.cost().gpu_hours == pytest.approx(fixed_cost(3, fixed).gpu_hours, rel=1e-3)


def test_the_cli_adds_the_comparison_and_keeps_the_policy_figures(capsys):
    assert main(["--jobs", "300", "--workers", "3", "--seed", "1", "--policies", "farm", "--autoscale",
                 "--start-delay-s", "20", "--scale-down-delay-s", "30", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"trace", "lower_bound_loads", "policies", "autoscale"}
    auto = answer["autoscale"]
    assert auto["policy"] == "farm" and auto["knobs"]["max_gpus"] == 3 and auto["start_delay_s"] == 20
    fields = {"gpu_hours", "peak_gpus", "makespan_s", "gpu_busy", "p50_wait_s", "p99_wait_s"}
    assert set(auto["fixed"]) == fields and set(auto["autoscaled"]) == fields
    fixed = answer["policies"]["farm"]
    assert auto["fixed"]["p99_wait_s"] == fixed["p99_wait_s"]
    assert auto["fixed"]["gpu_hours"] == pytest.approx(3 * fixed["makespan_s"] / 3600, abs=1e-4)
    assert main(["--jobs", "50", "--workers", "2", "--policies", "farm", "--autoscale"]) == 0
    table = capsys.readouterr().out
    assert "policy" in table and "autoscaled" in table and "gpu_hours" in table


def test_bad_knobs_are_one_line_and_exit_2(capsys):
    assert main(["--jobs", "50", "--autoscale", "--target-backlog-s", "0"]) == 2
    assert "target_backlog_s" in capsys.readouterr().out
