"""The farm's records translated to ComfyUI's shapes (queue tuples, history, jobs,
system_stats), checked against the shapes written out by hand from COMFYUI_API.md and
ComfyUI's jobs API."""
from __future__ import annotations

from farm.records.events import EventType
from farm.records.history import HistoryItem, HistoryStatus, JobTimings, StatusMessage
from farm.records.queue import QueueItem, QueueSnapshot
from farm.records.workers import DeviceInfo
from farm.server.routes.jobs import (
    JobStatus,
    finished_job,
    outputs_summary,
    queued_job,
    sort_jobs,
)
from farm.server.wire import history_out, number_out, queue_out, system_stats_out

PROMPT = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}}}
IMAGE = {"filename": "x_00001_.png", "subfolder": "", "type": "output"}


def history_item(status=HistoryStatus.SUCCESS, messages=(), outputs=None, create_time=1000) -> HistoryItem:
    return HistoryItem(
        number=3, prompt_id="p3", prompt=PROMPT, extra_data={"client_id": "c", "create_time": create_time},
        outputs_to_execute=("9",), outputs={"9": {"images": [IMAGE]}} if outputs is None else outputs,
        status=status, completed=status is HistoryStatus.SUCCESS, messages=tuple(messages),
        timings=JobTimings(submitted_at_s=1.0, started_at_s=2.0, finished_at_s=5.5), worker_id="w0")


def test_queue_items_are_positional_5_tuples():
    item = QueueItem(number=4, prompt_id="p4", prompt=PROMPT, extra_data={"client_id": "c"},
                     outputs_to_execute=("9",), worker_id="w1")
    snapshot = QueueSnapshot(running=[item], pending=[])
    assert queue_out(snapshot) == {"queue_running": [[4, "p4", PROMPT, {"client_id": "c"}, ["9"]]],
                                   "queue_pending": []}
    assert snapshot.remaining == 1


def test_number_keeps_fractions():
    assert number_out(5.0) == 5 and isinstance(number_out(5.0), int)
    assert number_out(-2.5) == -2.5


def test_history_item_shape():
    start = StatusMessage(EventType.EXECUTION_START, {"prompt_id": "p3", "timestamp": 2000})
    done = StatusMessage(EventType.EXECUTION_SUCCESS, {"prompt_id": "p3", "timestamp": 5500})
    out = history_out([history_item(messages=[start, done])])
    assert list(out) == ["p3"]
    entry = out["p3"]
    assert entry["prompt"] == [3, "p3", PROMPT, {"client_id": "c", "create_time": 1000}, ["9"]]
    assert entry["outputs"] == {"9": {"images": [IMAGE]}}
    assert entry["status"] == {"status_str": "success", "completed": True,
                               "messages": [["execution_start", {"prompt_id": "p3", "timestamp": 2000}],
                                            ["execution_success", {"prompt_id": "p3", "timestamp": 5500}]]}
    assert entry["meta"] == {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
    assert entry["farm"]["queue_wait_s"] == 1.0 and entry["farm"]["run_s"] == 3.5


def test_system_stats_shape():
    gpu = DeviceInfo(name="cuda:0 NVIDIA H100", type="cuda", index=0, vram_total=80 * 2**30, vram_free=70 * 2**30,
                     torch_vram_total=2**30, torch_vram_free=2**29, node="node-a", worker_id="w0")
    out = system_stats_out({"os": "linux"}, [gpu])
    assert out == {"system": {"os": "linux"}, "devices": [{
        "name": "cuda:0 NVIDIA H100", "type": "cuda", "index": 0, "vram_total": 80 * 2**30,
        "vram_free": 70 * 2**30, "torch_vram_total": 2**30, "torch_vram_free": 2**29,
        "node": "node-a", "worker_id": "w0"}]}


def test_queued_job():
    item = QueueItem(number=7, prompt_id="p7", prompt=PROMPT, outputs_to_execute=("9",),
                     extra_data={"create_time": 123, "extra_pnginfo": {"workflow": {"id": "wf-1"}}})
    assert queued_job(item, JobStatus.PENDING) == {"id": "p7", "status": "pending", "priority": 7, "create_time": 123,
                                                   "outputs_count": 0, "workflow_id": "wf-1"}


def test_finished_jobs_status_and_times():
    start = StatusMessage(EventType.EXECUTION_START, {"prompt_id": "p3", "timestamp": 2000})
    error = StatusMessage(EventType.EXECUTION_ERROR, {"prompt_id": "p3", "node_id": "3", "timestamp": 4000})
    stopped = StatusMessage(EventType.EXECUTION_INTERRUPTED, {"prompt_id": "p3", "timestamp": 3000})
    ok = finished_job(history_item())
    assert ok["status"] == "completed" and ok["outputs_count"] == 1
    assert ok["execution_start_time"] == 2000 and ok["execution_end_time"] == 5500  # from the timings
    assert ok["preview_output"] == {**IMAGE, "nodeId": "9", "mediaType": "images"}
    failed = finished_job(history_item(HistoryStatus.ERROR, [start, error], outputs={}))
    assert failed["status"] == "failed"
    # node_type is always a string: ComfyUI's frontend drops a jobs list with a null there
    assert failed["execution_error"] == {"prompt_id": "p3", "node_id": "3", "node_type": "", "timestamp": 4000}
    assert (failed["execution_start_time"], failed["execution_end_time"]) == (2000, 4000)
    assert "preview_output" not in failed  # None values are left out
    cancelled = finished_job(history_item(HistoryStatus.ERROR, [start, stopped], outputs={}))
    assert cancelled["status"] == "cancelled" and cancelled["execution_end_time"] == 3000
    detailed = finished_job(history_item(), with_details=True)
    assert detailed["workflow"] == {"prompt": PROMPT, "extra_data": {"client_id": "c", "create_time": 1000}}
    assert detailed["outputs"] == {"9": {"images": [IMAGE]}}
    assert detailed["execution_status"]["status_str"] == "success"


def test_preview_prefers_saved_files_and_counts_all():
    temp = {"filename": "t.png", "subfolder": "", "type": "temp"}
    outputs = {"5": {"images": [temp, temp]}, "9": {"images": [IMAGE], "animated": [False]}}
    count, preview = outputs_summary(outputs)
    assert count == 3
    assert preview == {**IMAGE, "nodeId": "9", "mediaType": "images"}


def test_sorting():
    jobs = [{"id": "a", "create_time": 2}, {"id": "b", "create_time": 9}, {"id": "c"},
            {"id": "d", "create_time": 5, "execution_start_time": 10, "execution_end_time": 40}]
    assert [j["id"] for j in sort_jobs(jobs, "created_at", descending=True)] == ["b", "d", "a", "c"]
    assert [j["id"] for j in sort_jobs(jobs, "created_at", descending=False)] == ["c", "a", "d", "b"]
    assert [j["id"] for j in sort_jobs(jobs, "execution_duration", descending=True)][0] == "d"
