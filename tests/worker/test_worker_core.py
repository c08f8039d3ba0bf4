"""WorkerCore without Ray: a batch's reports, events and files; a targeted interrupt that
spares the other job of the call (it runs on, not again); faults classified for the dispatcher."""
from __future__ import annotations

import concurrent.futures
import gc
import json
import threading
from importlib.resources import files

import pytest
import torch

from farm.engine.images import LocalImageWriter, OutputWriteError
from farm.errors import NodeExecutionError
from farm.models.tiers import TierConfig
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.records.events import EventType
from farm.records.paths import FarmPaths
from farm.records.residency import Tier
from farm.scheduler.messages import FailureKind, WorkItem
from farm.worker.channels import EventForwarder, RemoteImageSink
from farm.worker.core import WorkerCore, is_out_of_memory
from farm.workflow.prepare import prepare

TINY = {"5.width": 64, "5.height": 64, "3.steps": 2}
PATHS: list[FarmPaths] = []  # the rig's folders, for item()


@pytest.fixture(scope="module")
def rig(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    paths = FarmPaths.under(root, tiny_models)
    writer = LocalImageWriter(paths.output, paths.temp)
    events: list = []
    listeners: list = []

    def send(batch):
        events.extend(batch)
        for fn in listeners:
            fn(batch)

    forwarder = EventForwarder(send, concurrent.futures.wait, interval_s=0.01)
    core = WorkerCore("w0", paths, torch.device("cpu"), torch.float32, RemoteImageSink(writer.reserve, writer.write), forwarder,
                      TierConfig(vram_bytes=1 << 30, pinned_bytes=1 << 30))
    PATHS[:] = [paths]
    yield core, writer, events, listeners, paths
    forwarder.close()
    writer.close()


def item(prompt_id: str, node_ctx: NodeContext | None = None, **overrides) -> WorkItem:
    """A job as the dispatcher hands it out: prepared once (here, against the tiny models
    unless another node's folders are given), carrying its plan."""
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    prepared = prepare(workflow, default_registry(), node_ctx or NodeContext.for_paths(PATHS[0]),
                       {**TINY, **overrides}, prompt_id=prompt_id)
    return WorkItem(prompt_id, prepared.prompt, prepared.plan, "client-1")


def test_a_batch_reports_each_job_with_its_files_messages_and_events(rig):
    core, writer, events, _, paths = rig
    result = core.run_batch([item("p1", **{"3.seed": 1}), item("p2", **{"3.seed": 2})])
    assert [r.prompt_id for r in result.reports] == ["p1", "p2"]
    for report in result.reports:
        assert report.ok and report.batch_size == 2 and report.worker_id == "w0"
        assert len(report.images) == 1 and len(report.writes) == 1
        report.writes[0].result(30)  # the writer's future for this job's file
        assert (paths.output / report.images[0].subfolder / report.images[0].filename).is_file()
        kinds = [m.event for m in report.messages]
        assert kinds[0] is EventType.EXECUTION_START and kinds[-1] is EventType.EXECUTION_SUCCESS
        assert all("timestamp" in m.data for m in report.messages)
        assert report.started_at_s <= report.finished_at_s
    assert result.reports[0].images[0] != result.reports[1].images[0]
    assert result.reports[0].writes[0] is not result.reports[1].writes[0]
    assert "tiny-sd15.safetensors" in result.residency.gpu
    assert (result.residency.lora_checkpoint, result.residency.loras) == ("tiny-sd15.safetensors", ())
    assert result.residency.free_vram_bytes is None  # a CPU worker has no VRAM to budget
    assert core.stats()["warm_up"] == {"seconds": 0.0, "shapes": {}, "decoders": {}}  # compile is off on the CPU
    gc.collect()
    assert core.stats()["gc"]["generations"]["2"]["count"] >= 1  # the collector is timed in a worker
    assert [m.source for m in result.loads] == [Tier.STORE]
    progress = [e for e in events if e.type is EventType.PROGRESS]
    assert {e.data["prompt_id"] for e in progress} == {"p1", "p2"}
    assert all(e.client_id == "client-1" for e in events)


def run_interrupting(rig, items: list[WorkItem], stop: set[str]):
    """The batch of `items`, and an interrupt of `stop` sent from another thread once the
    first of them reports sampler progress; returns the batch's result and what interrupt()
    answered."""
    core, _, _, listeners, _ = rig
    seen = threading.Event()

    def watch(batch):
        if any(e.type is EventType.PROGRESS and e.data["prompt_id"] in stop for e in batch):
            seen.set()

    listeners.append(watch)
    asked: list[bool] = []
    stopper = threading.Thread(target=lambda: seen.wait(60) and asked.append(core.interrupt(stop)))
    stopper.start()
    try:
        result = core.run_batch(items)
    finally:
        stopper.join()
        listeners.remove(watch)
    return result, asked


def interrupted_at(report) -> dict:
    """The report's one execution_interrupted payload."""
    (payload,) = [m.data for m in report.messages if m.event is EventType.EXECUTION_INTERRUPTED]
    return payload


def test_interrupting_one_job_of_a_batch_spares_the_other(rig):
    core = rig[0]
    samplings = core.engine.node_runs.get("KSampler", 0)
    result, asked = run_interrupting(rig, [item("stop-me", **{"3.steps": 12, "3.seed": 21}),
                                           item("keep-me", **{"3.steps": 12, "3.seed": 22})], {"stop-me"})
    assert asked == [True]  # it reached the running call
    by_id = {r.prompt_id: r for r in result.reports}
    assert by_id["stop-me"].failure is FailureKind.INTERRUPTED
    # the stop waits for the batch's sampler and takes the job out before the next node
    stopped = interrupted_at(by_id["stop-me"])
    assert stopped["node_type"] == "VAEDecode" and "3" in stopped["executed"]
    assert not by_id["stop-me"].images
    assert by_id["keep-me"].ok and len(by_id["keep-me"].images) == 1
    # the other job was not stopped and run again: the two seeds sampled once each
    assert core.engine.node_runs["KSampler"] - samplings == 2
    assert [m.event for m in by_id["keep-me"].messages].count(EventType.EXECUTION_START) == 1
    assert core.interrupt({"stop-me"}) is False  # nothing runs now


def test_interrupting_every_job_of_a_batch_stops_it_within_the_sampler(rig):
    result, asked = run_interrupting(rig, [item("a", **{"3.steps": 200}), item("b", **{"3.steps": 200})],
                                     {"a", "b"})
    assert asked == [True]
    for report in result.reports:
        assert report.failure is FailureKind.INTERRUPTED
        assert interrupted_at(report)["node_type"] == "KSampler"


def test_an_interrupt_that_arrives_before_its_call_begins_stops_it_when_it_does(rig):
    """The dispatcher interrupts a prompt as soon as it is dispatched to this worker; Ray
    may run that call before run_batch has registered the prompt. It must not be lost."""
    core, *_ = rig
    assert core.interrupt({"early"}) is False  # nothing of it runs yet
    result = core.run_batch([item("early", **{"3.seed": 5}), item("bystander", **{"3.seed": 6})])
    by_id = {r.prompt_id: r for r in result.reports}
    assert by_id["early"].failure is FailureKind.INTERRUPTED
    assert by_id["bystander"].ok and len(by_id["bystander"].images) == 1
    assert [m.event for m in by_id["bystander"].messages].count(EventType.EXECUTION_START) == 1  # not run twice
    again = core.run_batch([item("early", **{"3.seed": 5})])  # the stop was used up
    assert again.reports[0].ok


def test_a_checkpoint_missing_on_this_node_is_an_invalid_job_not_a_crash(rig, tiny_models, tmp_path):
    core, *_ = rig
    # validated on a node (the head) that has the file; this worker's folder does not
    head = tmp_path / "head-models" / "checkpoints"
    head.mkdir(parents=True)
    (head / "elsewhere.safetensors").symlink_to(tiny_models / "checkpoints" / "tiny-sd15.safetensors")
    head_ctx = NodeContext.for_paths(FarmPaths.under(tmp_path, tmp_path / "head-models"))
    result = core.run_batch([item("p3", head_ctx, **{"4.ckpt_name": "elsewhere.safetensors"})])
    (report,) = result.reports
    assert report.failure is FailureKind.INVALID and "w0" in report.error and "elsewhere" in report.error


def test_a_checkpoint_that_does_not_load_fails_on_its_loader_node_as_comfyui_reports_it(rig, tiny_models):
    core, _, events, _, _ = rig
    broken = tiny_models / "checkpoints" / "broken-in-core.safetensors"
    broken.write_bytes(b"not a safetensors file")
    try:
        result = core.run_batch([item("p-broken", **{"4.ckpt_name": broken.name})])
    finally:
        broken.unlink()
    (report,) = result.reports
    assert report.failure is FailureKind.NODE and broken.name in report.error
    assert [m.event for m in report.messages] == [EventType.EXECUTION_START, EventType.EXECUTION_ERROR]
    error = report.messages[-1].data
    assert (error["node_id"], error["node_type"]) == ("4", "CheckpointLoaderSimple")
    sent = [e.type for e in events if e.data.get("prompt_id") == "p-broken"]
    assert sent == [EventType.EXECUTION_START, EventType.EXECUTION_ERROR]  # before run_batch returned
    assert broken.name not in result.residency.gpu | result.residency.pinned | result.residency.disk


def test_out_of_memory_is_recognised_through_the_node_error():
    oom = NodeExecutionError("3", "KSampler", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(oom)
    assert not is_out_of_memory(NodeExecutionError("3", "KSampler", ValueError("bad cfg")))
    assert not is_out_of_memory(None)


def test_a_failed_write_is_in_the_jobs_handle_not_a_raise_on_the_engine_thread(rig):
    core, _, _, _, paths = rig
    (paths.output / "blocked").write_text("a file where the subfolder should be")
    result = core.run_batch([item("p4", **{"9.filename_prefix": "blocked/img", "3.seed": 4})])
    (report,) = result.reports
    assert report.ok and len(report.writes) == 1  # the job ran; only its file is missing
    with pytest.raises(OutputWriteError, match="blocked"):
        report.writes[0].result(30)


def test_a_job_retried_after_a_failed_write_writes_its_images_this_time(rig):
    """The dispatcher retries a job whose files did not reach the disk (attempt 2). On the
    same worker its SaveImage is in the node cache: it must run again and write."""
    import dataclasses

    core, _, _, _, paths = rig
    blocker = paths.output / "later"
    blocker.write_text("a file where the subfolder should be")
    job = item("p-retry", **{"9.filename_prefix": "later/img", "3.seed": 8})
    (first,) = core.run_batch([job]).reports
    with pytest.raises(OutputWriteError):
        first.writes[0].result(30)
    blocker.unlink()  # the disk is fine again
    (again,) = core.run_batch([dataclasses.replace(job, attempt=2)]).reports
    assert again.ok and len(again.images) == 1 and len(again.writes) == 1
    again.writes[0].result(30)
    assert (paths.output / again.images[0].subfolder / again.images[0].filename).is_file()


def test_the_report_names_the_lora_set_the_last_call_applied(rig, tiny_loras):
    core = rig[0]
    lora = "tiny-sd15-kohya.safetensors"
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    workflow["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
                                                             "strength_model": 0.7, "strength_clip": 0.4}}
    workflow["3"]["inputs"]["model"] = ["10", 0]
    for node in ("6", "7"):
        workflow[node]["inputs"]["clip"] = ["10", 1]
    prepared = prepare(workflow, default_registry(), NodeContext.for_paths(PATHS[0]), TINY, prompt_id="p-lora")
    result = core.run_batch([WorkItem("p-lora", prepared.prompt, prepared.plan, None)])
    assert result.reports[0].ok, result.reports[0].error
    assert result.residency.loras == ((lora, 0.7, 0.4),) == core.state().residency.loras
    assert result.residency.applied_loras("tiny-sd15.safetensors") == ((lora, 0.7, 0.4),)


def test_a_controlnet_missing_on_this_node_is_an_invalid_job(rig, tiny_controlnets, tmp_path):
    core, *_ = rig
    head = tmp_path / "head-models"
    (head / "controlnet").mkdir(parents=True)
    (head / "checkpoints").symlink_to(tiny_controlnets / "checkpoints")
    (head / "controlnet" / "head-only.safetensors").symlink_to(tiny_controlnets / "controlnet" / "tiny-cn-sd15.safetensors")
    head_paths = FarmPaths.under(tmp_path, head)
    head_paths.input.mkdir(parents=True)
    (head_paths.input / "hint.png").write_bytes(_png())
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    workflow["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "head-only.safetensors"}}
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    workflow["12"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["10", 0],
                                                                 "image": ["11", 0], "strength": 1.0}}
    workflow["3"]["inputs"]["positive"] = ["12", 0]
    prepared = prepare(workflow, default_registry(), NodeContext.for_paths(head_paths), TINY, prompt_id="p5")
    assert prepared.plan.model_files == (("controlnet", "head-only.safetensors"),)
    result = core.run_batch([WorkItem("p5", prepared.prompt, prepared.plan, "client-1")])
    (report,) = result.reports
    assert report.failure is FailureKind.INVALID and "head-only" in report.error


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "PNG")
    return buffer.getvalue()
