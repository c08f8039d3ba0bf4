"""From the scheduler's and the workers' records to the ones the farm shows (queue,
history, workers, devices: farm.records' types). Pure functions, no Ray."""
from __future__ import annotations

from farm.records import comfy_errors
from farm.records.events import EventType
from farm.records.history import HistoryItem, HistoryStatus, JobTimings, StatusMessage
from farm.records.queue import QueueItem
from farm.records.residency import ResidencyReport
from farm.records.workers import DeviceInfo, ResidencyTiers, WorkerStatus
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.messages import Message, WorkerState, WorkItem


def work_item(job: Job) -> WorkItem:
    return WorkItem(job.job_id, job.workflow, job.plan, job.client_id, job.extra_data.get("extra_pnginfo"),
                    attempt=max(1, job.attempts))


def queue_item(job: Job) -> QueueItem:
    return QueueItem(job.number, job.job_id, job.workflow, job.extra_data, tuple(job.outputs_to_execute),
                     job.worker_id if job.state is JobState.RUNNING else None)


def _ms(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1000)


def synthesized_messages(job: Job) -> tuple[StatusMessage, ...]:
    """Lifecycle messages rebuilt from the stored job, for history after a dispatcher
    restart (the live ones are kept in memory only) and for jobs that never reached a
    worker (cancelled while queued, failed after their workers died)."""
    out = []
    if job.started_s is not None:
        out.append(StatusMessage(EventType.EXECUTION_START, {"prompt_id": job.job_id, "timestamp": _ms(job.started_s)}))
    end = {"prompt_id": job.job_id, "timestamp": _ms(job.finished_s)}
    if job.state is JobState.DONE:
        out.append(StatusMessage(EventType.EXECUTION_SUCCESS, end))
    elif job.state is JobState.CANCELLED:
        out.append(StatusMessage(EventType.EXECUTION_INTERRUPTED, {**end, "node_id": None, "executed": []}))
    elif job.state is JobState.FAILED:
        out.append(StatusMessage(EventType.EXECUTION_ERROR, {**end, **error_payload(job)}))
    return tuple(out)


def error_payload(job: Job) -> dict:
    """execution_error's body for a failure the dispatcher decided (no node to blame)."""
    return comfy_errors.farm_failure(job.error or "")


def history_item(job: Job, messages: list[Message] | None) -> HistoryItem:
    status = HistoryStatus.SUCCESS if job.state is JobState.DONE else HistoryStatus.ERROR
    completed = job.state is JobState.DONE and all(o in job.outputs for o in job.outputs_to_execute)
    if messages:
        kept = tuple(StatusMessage(m.event, m.data) for m in messages)
    else:
        kept = synthesized_messages(job)
    return HistoryItem(job.number, job.job_id, job.workflow, job.extra_data, tuple(job.outputs_to_execute),
                       job.outputs, status, completed, kept,
                       JobTimings(job.created_s, job.started_s, job.finished_s), job.worker_id, job.attempts)


def residency_tiers(report: ResidencyReport) -> ResidencyTiers:
    return ResidencyTiers(tuple(sorted(report.gpu)), tuple(sorted(report.pinned)), tuple(sorted(report.disk)))


def worker_status(state: WorkerState | None, worker_id: str, backlog: int, alive: bool) -> WorkerStatus:
    if state is None:
        return WorkerStatus(worker_id, "", None, "", alive, backlog=backlog,
                            utilization_reason="the worker did not answer")
    return WorkerStatus(worker_id, state.node, state.gpu_index, state.gpu_name, alive,
                        residency_tiers(state.residency), backlog, state.running, state.gpu.utilization,
                        state.vram_used_bytes, state.vram_total_bytes, state.gpu.utilization_reason, state.gpu_uuid)


def device_info(state: WorkerState) -> DeviceInfo:
    kind = state.device.split(":")[0]
    if kind == "cuda":
        name = f"{state.device} {state.gpu_name} : cudaMallocAsync"
        return DeviceInfo(name, kind, state.gpu_index, state.vram_total_bytes or 0, state.vram_free_bytes or 0,
                          state.torch_vram_total, state.torch_vram_free, state.node, state.worker_id)
    return DeviceInfo("cpu", "cpu", None, state.vram_total_bytes or 0, state.vram_free_bytes or 0, 0, 0,
                      state.node, state.worker_id)
