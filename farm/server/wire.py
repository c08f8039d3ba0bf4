"""What travels over HTTP: request bodies as pydantic models, and the translation of the
farm's records into ComfyUI's shapes (positional queue tuples, history dicts keyed by
prompt id). Only this module knows those shapes."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.records.history import HistoryItem
from farm.records.queue import QueueItem, QueueSnapshot
from farm.records.workers import DeviceInfo, WorkerStatus

# --- requests ---------------------------------------------------------------------------


class _Body(BaseModel):
    # Clients send keys ComfyUI ignores (and future ones); refusing them would break them.
    model_config = ConfigDict(extra="allow")


class PromptRequest(_Body):
    prompt: Any = None  # the API-format workflow (a saved UI graph is converted)
    client_id: str | None = None
    prompt_id: Any = None  # checked by hand: a bad one is ComfyUI's invalid_prompt_id, not a 422
    extra_data: dict | None = None
    number: float | None = None
    front: Any = None  # ComfyUI tests it for truth
    partial_execution_targets: list[str] | None = None


class ItemsAction(_Body):
    """POST /queue and POST /history."""

    clear: Any = None
    delete: list[str] = Field(default_factory=list)


class InterruptRequest(_Body):
    prompt_id: str | None = None


class FreeRequest(_Body):
    unload_models: bool = False
    free_memory: bool = False


class CancelJobsRequest(_Body):
    job_ids: list[Any]


class BatchRequest(BaseModel):
    """POST /batch: one workflow, many variants."""

    prompt: dict = Field(description="the workflow (API format, or a saved UI graph)")
    overrides: list[dict[str, Any]] = Field(
        min_length=1,
        description='one dict per prompt to queue, keys "NODE_ID.INPUT", e.g. [{"3.seed": 1}, {"3.seed": 2}]')
    client_id: str | None = Field(None, description="websocket client that gets the events of every variant")
    extra_data: dict = Field(default_factory=dict, description="as in POST /prompt")
    front: bool = Field(False, description="queue the whole batch ahead of what is waiting")


class BatchResponse(BaseModel):
    prompt_ids: list[str] = Field(description="one per override, in the same order")
    numbers: list[float] = Field(description="the queue priority of each")
    node_errors: list[dict] = Field(description="per variant: errors of outputs that were dropped")


class ResidencyOut(BaseModel):
    vram: list[str]
    pinned_ram: list[str]
    disk: list[str]


class WorkerOut(BaseModel):
    worker_id: str
    node: str
    gpu_index: int | None
    gpu_name: str
    alive: bool
    tiers: ResidencyOut
    backlog: int
    running: list[str]
    utilization: float | None = Field(description="GPU busy fraction 0..1 over the last ~10 s (NVML); "
                                                  "null when not measured, utilization_reason says why")
    vram_used_bytes: int | None
    vram_total_bytes: int | None
    utilization_reason: str | None = Field(None, description='why utilization is null, e.g. "no GPU: a CPU worker"')


def worker_out(w: WorkerStatus) -> WorkerOut:
    tiers = ResidencyOut(vram=list(w.tiers.vram), pinned_ram=list(w.tiers.pinned_ram), disk=list(w.tiers.disk))
    return WorkerOut(worker_id=w.worker_id, node=w.node, gpu_index=w.gpu_index, gpu_name=w.gpu_name,
                     alive=w.alive, tiers=tiers, backlog=w.backlog, running=list(w.running),
                     utilization=w.utilization, vram_used_bytes=w.vram_used_bytes,
                     vram_total_bytes=w.vram_total_bytes, utilization_reason=w.utilization_reason)


# --- ComfyUI shapes ---------------------------------------------------------------------


def number_out(number: float) -> float | int:
    """Counter numbers go out as JSON integers, as ComfyUI's do."""
    return int(number) if float(number).is_integer() else number


def queue_item_out(item: QueueItem | HistoryItem) -> list:
    """[number, prompt_id, prompt, extra_data, outputs_to_execute]"""
    return [number_out(item.number), item.prompt_id, item.prompt, item.extra_data, list(item.outputs_to_execute)]


def queue_out(snapshot: QueueSnapshot) -> dict:
    return {"queue_running": [queue_item_out(i) for i in snapshot.running],
            "queue_pending": [queue_item_out(i) for i in snapshot.pending]}


def history_item_out(item: HistoryItem) -> dict:
    timings = item.timings
    return {
        "prompt": queue_item_out(item),
        "outputs": item.outputs,
        "status": {
            "status_str": item.status.value,
            "completed": item.completed,
            "messages": [[m.event.value, m.data] for m in item.messages],
        },
        # Output nodes sit at the top level of the graph: each displays itself.
        "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                           "real_node_id": node_id} for node_id in item.outputs},
        "farm": {  # not in ComfyUI; clients that do not know it ignore it
            "worker_id": item.worker_id,
            "attempts": item.attempts,
            "submitted_at": timings.submitted_at_s,
            "started_at": timings.started_at_s,
            "finished_at": timings.finished_at_s,
            "queue_wait_s": timings.queue_wait_s,
            "run_s": timings.run_s,
        },
    }


def history_out(items: list[HistoryItem]) -> dict:
    return {item.prompt_id: history_item_out(item) for item in items}


def device_out(d: DeviceInfo) -> dict:
    out: dict[str, Any] = {"name": d.name, "type": d.type, "index": d.index, "vram_total": d.vram_total,
                           "vram_free": d.vram_free, "torch_vram_total": d.torch_vram_total,
                           "torch_vram_free": d.torch_vram_free}
    if d.node is not None:
        out["node"] = d.node
    if d.worker_id is not None:
        out["worker_id"] = d.worker_id
    return out


def system_stats_out(system: dict, devices: list[DeviceInfo]) -> dict:
    return {"system": system, "devices": [device_out(d) for d in devices]}
