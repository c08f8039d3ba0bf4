"""LoRA-aware placement: a worker's report says which LoRA set it applied to which resident
checkpoint; a job with that set prefers it; a switch costs patch time, far below a load;
batches never mix LoRA sets; the simulator counts switches. Pure: no Ray."""
import dataclasses
import json

import pytest

from farm.records.residency import GB, Residency, ResidencyReport, Tier
from farm.scheduler.batching import form_batch
from farm.scheduler.core import CoreConfig, DispatcherCore
from farm.scheduler.costs import ARCHS, LORA_SWITCH_S, job_estimates, lora_switch_s
from farm.scheduler.jobs import Job
from farm.scheduler.placement import FarmPolicy, PressurePolicy
from farm.scheduler.queues import KeyedQueue
from farm.scheduler.simulate import run_policy
from farm.scheduler.simulate_cli import main as simulate_main
from farm.scheduler.store import JobStore
from farm.scheduler.trace import Template, TraceJob, TraceSpec, make_trace

SDXL = int(5.1 * GB)
X = (("style-x.safetensors", 0.8, 0.8),)
Y = (("style-y.safetensors", 1.0, None),)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def holding(*held: str, lora_on: str | None = None, loras=()) -> ResidencyReport:
    """What a real 12 GB worker reports after loading `held`, with `loras` applied to `lora_on`."""
    res = Residency(gpu_bytes=12 * GB, pinned_bytes=16 * GB, disk_bytes=200 * GB)
    for name in held:
        res.load(name, SDXL)
    return dataclasses.replace(res.report(), lora_checkpoint=lora_on, loras=loras)


def job(n: int, loras=(), checkpoint: str = "A") -> Job:
    key = f"{checkpoint}|25|" + ",".join(name for name, _, _ in loras)
    return Job(job_id=f"j{n}", number=n, checkpoint=checkpoint, checkpoint_bytes=SDXL, batch_key=key,
               est_run_s=2.0, est_extra_s=1.0, loras=loras)


def idle_core(policy, workers: dict[str, ResidencyReport]) -> DispatcherCore:
    core = DispatcherCore(JobStore(), policy, Clock(), CoreConfig())
    for worker_id, report in workers.items():
        core.register_worker(worker_id, report)
        assert core.worker_ready(worker_id, report) is None  # idle: asked and got nothing
    return core


def test_switch_cost_counts_each_lora_that_enters_or_leaves():
    assert lora_switch_s(X, X) == 0.0 and lora_switch_s((), ()) == 0.0
    assert lora_switch_s((), X) == LORA_SWITCH_S  # patch one in
    assert lora_switch_s(X, Y) == 2 * LORA_SWITCH_S  # one out, one in
    assert lora_switch_s(X, (("style-x.safetensors", 1.0, 1.0),)) == 2 * LORA_SWITCH_S  # a strength change
    assert lora_switch_s(X, X + Y, per_lora_s=0.3) == pytest.approx(0.3)


@pytest.mark.parametrize("policy", [FarmPolicy, PressurePolicy])
def test_a_job_goes_to_the_idle_holder_that_applied_its_lora_set(policy):
    core = idle_core(policy(), {"wx": holding("A", lora_on="A", loras=X),
                                "wy": holding("A", lora_on="A", loras=Y),
                                "w0": holding("A")})
    for n, (loras, expected) in enumerate([(Y, "wy"), (X, "wx"), ((), "w0")]):
        placement = core.submit(job(n, loras))
        assert (placement.worker_id, placement.wake, placement.source_tier) == (expected, True, Tier.GPU)
        assert placement.expected_finish_s == pytest.approx(2.0)  # no load, no LoRA switch
        core.delete_pending([f"j{n}"])
    # a set nobody applied: any idle holder, with the switch in its forecast
    placement = core.submit(job(9, X + Y))
    assert placement.worker_id in ("wx", "wy", "w0")
    applied = core.fleet.workers[placement.worker_id].residency.applied_loras("A")
    assert placement.expected_finish_s == pytest.approx(2.0 + lora_switch_s(applied, X + Y))


def test_a_resident_checkpoint_wins_over_a_lora_match_on_a_cold_worker():
    """warm holds A in VRAM with X applied; cold last applied Y to A, but A has left its VRAM
    (pinned RAM only). A job of A with Y goes to warm: a switch (0.1 s) is cheaper than a
    load, and a LoRA patched into weights that are gone is applied nowhere."""
    cold = holding("A", "B", "C", lora_on="A", loras=Y)  # B and C pushed A out of the 12 GB
    assert "A" not in cold.gpu and cold.source("A") is Tier.PINNED and cold.applied_loras("A") == ()
    core = idle_core(FarmPolicy(), {"cold": cold, "warm": holding("A", lora_on="A", loras=X)})
    placement = core.submit(job(0, Y))
    assert (placement.worker_id, placement.source_tier) == ("warm", Tier.GPU)
    fleet = core.fleet
    assert fleet.switch_s(fleet.workers["warm"], "A", SDXL, Y) == pytest.approx(2 * LORA_SWITCH_S)
    assert fleet.switch_s(fleet.workers["cold"], "A", SDXL, Y) == pytest.approx(0.10 + LORA_SWITCH_S)
    assert fleet.switch_s(fleet.workers["cold"], "A", SDXL) == pytest.approx(0.10)  # no LoRA asked: load only


def test_dispatch_records_the_batch_lora_set_until_the_next_report():
    """Between a dispatch and the worker's next report, the dispatcher counts the batch's
    set as applied, so the next job of that set prefers this worker too."""
    core = idle_core(FarmPolicy(), {"w1": holding("A"), "w2": holding("A")})
    first = core.submit(job(0, X))
    batch = core.worker_ready(first.worker_id, holding("A"))
    assert batch.loras == X and batch.job_ids == ("j0",)
    view = core.fleet.workers[first.worker_id]
    assert view.residency.applied_loras("A") == X
    # it finishes and asks again with a report that says so; the other worker is idle too
    core.complete("j0", {})
    assert core.worker_ready(first.worker_id, holding("A", lora_on="A", loras=X)) is None
    assert core.submit(job(1, X)).worker_id == first.worker_id


def test_a_batch_never_mixes_lora_sets():
    queue = KeyedQueue(8)
    for n, loras in enumerate([X, X, Y, X]):  # one key for all (made upstream without LoRAs)
        queue.add(dataclasses.replace(job(n, loras), batch_key="A|25", seq=n))
    batch = form_batch(queue, 8)
    assert batch.job_ids == ("j0", "j1") and batch.loras == X  # Y ends the batch
    assert form_batch(queue, 8).job_ids == ("j2",)
    assert form_batch(queue, 8).job_ids == ("j3",)


def test_prepared_jobs_carry_their_lora_set_and_only_equal_sets_share_a_batch_key(tmp_path, tiny_loras):
    from farm.nodes.registry import default_registry
    from farm.nodes.spec import NodeContext
    from farm.records.paths import FarmPaths
    from farm.workflow.prepare import prepare

    ctx = NodeContext.for_paths(FarmPaths.under(tmp_path, tiny_loras))

    def prepared(seed: int, lora: str | None, strength: float = 1.0, width: int = 64):
        nodes = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
                 "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 48, "batch_size": 2}}}
        model, clip = ["4", 0], ["4", 1]
        if lora:
            nodes["10"] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": lora, "strength_model": strength, "strength_clip": 0.5}}
            model, clip = ["10", 0], ["10", 1]
        nodes.update({
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a cat {seed}", "clip": clip}},
            "3": {"class_type": "KSampler", "inputs": {
                "seed": seed, "steps": 2, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                "model": model, "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "l"}}})
        p = prepare(nodes, default_registry(), ctx, prompt_id=f"p{seed}-{lora}-{strength}")
        return Job.from_prepared(p, ctx.models, number=seed)

    kohya = "tiny-sd15-kohya.safetensors"
    a, b = prepared(1, kohya), prepared(2, kohya)
    weaker, other, none = prepared(3, kohya, 0.5), prepared(4, "tiny-sd15-peft.safetensors"), prepared(5, None)
    assert a.loras == ((kohya, 1.0, 0.5),) and weaker.loras == ((kohya, 0.5, 0.5),) and none.loras == ()
    assert a.batch_key == b.batch_key  # seeds and prompts differ: one batch
    assert len({a.batch_key, weaker.batch_key, other.batch_key, none.batch_key}) == 4
    assert (a.arch, a.width, a.height, a.images) == ("sd15", 64, 48, 2)  # what the batch sizer reads

    store = JobStore(tmp_path / "q.db")  # the set survives the durable queue
    store.add(a)
    store.close()
    back = JobStore(tmp_path / "q.db").get(a.job_id)
    assert back.loras == a.loras and back.plan.loras == a.plan.loras and back.arch == "sd15"


def _one_worker_trace(sets) -> tuple[TraceSpec, list[TraceJob]]:
    spec = TraceSpec(jobs=len(sets), workers=1, checkpoints=1)
    arch = ARCHS["sd15"]
    run_s, extra_s = job_estimates(arch, 20, spec.max_batch)
    templates = {loras: Template(f"c|20|{loras}", "c", arch, 20, run_s, extra_s, run_s, loras) for loras in set(sets)}
    # 10 s apart: each job runs alone, so every change of set is one switch
    return spec, [TraceJob(f"j{i}", 10.0 * i, templates[loras]) for i, loras in enumerate(sets)]


def test_the_simulator_counts_lora_switches_and_charges_their_time():
    sets = [X, X, Y, (), (), X]  # () -> X, X -> Y, Y -> (), () -> X: four switches
    spec, trace = _one_worker_trace(sets)
    result, _ = run_policy(spec, trace, FarmPolicy())
    assert result.lora_switches == 4 and result.model_loads == 1
    same, _ = run_policy(*_one_worker_trace([X] * 6), FarmPolicy())
    assert same.lora_switches == 1  # patched in once, then kept
    # jobs run alone, so the last ends later by exactly its own switch (() -> X)
    assert result.makespan_s == pytest.approx(same.makespan_s + LORA_SWITCH_S)


def test_trace_loras_flag_names_lora_sets_and_the_json_reports_switches(capsys):
    plain, with_loras = make_trace(TraceSpec(jobs=300)), make_trace(TraceSpec(jobs=300, loras=2))
    assert all(j.template.loras == () for j in plain)
    named = {j.template.loras for j in with_loras}
    assert () in named and len(named) > 3  # none, and LoRAs of several checkpoints
    assert all(all(name in j.template.batch_key for name, _, _ in j.template.loras) for j in with_loras)
    assert simulate_main(["--jobs", "300", "--workers", "3", "--loras", "2", "--policies", "farm", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["policies"]["farm"]
    assert figures["lora_switches"] > 0
