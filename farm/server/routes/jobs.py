"""ComfyUI's jobs API (mounted under /api only, as in ComfyUI): one list of every prompt,
queued, running or finished, with filters, sorting and pages; one job; cancel.

GET  /api/jobs?status=pending,in_progress,completed,failed,cancelled&workflow_id=
              &sort_by=created_at|execution_duration&sort_order=asc|desc&limit=&offset=
     -> {"jobs": [...], "pagination": {"offset", "limit", "total", "has_more"}}
GET  /api/jobs/{id}          -> the job with outputs and workflow; 404 {"error"} if unknown
POST /api/jobs/{id}/cancel   -> {"cancelled": bool} (idempotent)
POST /api/jobs/cancel        {"job_ids": [...]} -> {"cancelled": bool}
"""
from __future__ import annotations

from enum import Enum

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from farm.records.events import EventType
from farm.records.history import HistoryItem, HistoryStatus
from farm.records.queue import QueueItem
from farm.server.deps import Service, read_body
from farm.server.http_errors import BadRequest, error_response
from farm.server.wire import CancelJobsRequest, history_item_out, number_out
from farm.workflow.errors import is_canonical_uuid

router = APIRouter()


class JobStatus(str, Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


SORT_FIELDS = ("created_at", "execution_duration")
PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio"})


def _pruned(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def _workflow_id(extra_data: dict) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return workflow.get("id") if isinstance(workflow, dict) else None


def queued_job(item: QueueItem, status: JobStatus) -> dict:
    return _pruned({"id": item.prompt_id, "status": status.value, "priority": number_out(item.number),
                    "create_time": item.extra_data.get("create_time"), "outputs_count": 0,
                    "workflow_id": _workflow_id(item.extra_data)})


def outputs_summary(outputs: dict[str, dict]) -> tuple[int, dict | None]:
    """(how many files the outputs hold, the one to show: a saved file before a temp one)."""
    count, saved, other = 0, None, None
    for node_id, ui in outputs.items():
        for media, entries in ui.items():
            if media == "animated" or not isinstance(entries, list):
                continue
            for entry in (e for e in entries if isinstance(e, dict)):
                count += 1
                if media in PREVIEWABLE_MEDIA:
                    shown = {**entry, "nodeId": node_id, "mediaType": media}
                    if entry.get("type") == "output" and saved is None:
                        saved = shown
                    elif other is None:
                        other = shown
    return count, saved or other


def finished_job(item: HistoryItem, with_details: bool = False) -> dict:
    by_event = {m.event: m.data for m in item.messages}
    ended = next((by_event[e] for e in (EventType.EXECUTION_SUCCESS, EventType.EXECUTION_ERROR,
                                         EventType.EXECUTION_INTERRUPTED) if e in by_event), None)
    if item.status is HistoryStatus.SUCCESS:
        status = JobStatus.COMPLETED
    else:
        status = JobStatus.CANCELLED if EventType.EXECUTION_INTERRUPTED in by_event else JobStatus.FAILED
    started = (by_event.get(EventType.EXECUTION_START) or {}).get("timestamp")
    if started is None and item.timings.started_at_s is not None:
        started = int(item.timings.started_at_s * 1000)
    ended_ms = (ended or {}).get("timestamp")
    if ended_ms is None and item.timings.finished_at_s is not None:
        ended_ms = int(item.timings.finished_at_s * 1000)
    count, preview = outputs_summary(item.outputs)
    job = _pruned({
        "id": item.prompt_id, "status": status.value, "priority": number_out(item.number),
        "create_time": item.extra_data.get("create_time"), "execution_start_time": started,
        "execution_end_time": ended_ms, "execution_error": _execution_error(by_event.get(EventType.EXECUTION_ERROR)),
        "outputs_count": count, "preview_output": preview, "workflow_id": _workflow_id(item.extra_data),
    })
    if with_details:
        job["outputs"] = item.outputs
        job["execution_status"] = history_item_out(item)["status"]
        job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return job


def _execution_error(error: dict | None) -> dict | None:
    """As ComfyUI's frontend reads it: node_id and node_type are strings (one null there
    and it drops the whole list). Older farms stored null for a failure with no node."""
    if error is None:
        return None
    return {**error, "node_id": error.get("node_id") or "", "node_type": error.get("node_type") or ""}


def _duration(job: dict) -> int:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return end - start if start and end else 0


def sort_jobs(jobs: list[dict], sort_by: str, descending: bool) -> list[dict]:
    key = _duration if sort_by == "execution_duration" else (lambda job: job.get("create_time") or 0)
    return sorted(jobs, key=key, reverse=descending)


def _statuses(raw: str | None) -> set[JobStatus]:
    if not raw:
        return set(JobStatus)
    names = [s.strip().lower() for s in raw.split(",") if s.strip()]
    valid = {s.value for s in JobStatus}
    invalid = [n for n in names if n not in valid]
    if invalid:
        raise BadRequest(f"unknown status {', '.join(invalid)}; use any of {', '.join(sorted(valid))}")
    return {JobStatus(n) for n in names}


def _page(query) -> tuple[int | None, int]:
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        if limit <= 0:
            raise BadRequest("limit must be a positive integer")
    offset = 0
    if "offset" in query:
        try:
            offset = max(0, int(query["offset"]))
        except ValueError:
            raise BadRequest("offset must be an integer") from None
    return limit, offset


@router.get("/jobs")
async def list_jobs(request: Request, service: Service) -> dict:
    query = request.query_params
    wanted = _statuses(query.get("status"))
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in SORT_FIELDS:
        raise BadRequest(f"sort_by must be one of {', '.join(SORT_FIELDS)}")
    if sort_order not in ("asc", "desc"):
        raise BadRequest("sort_order must be asc or desc")
    limit, offset = _page(query)

    snapshot = await service.queue()
    jobs = [queued_job(i, JobStatus.IN_PROGRESS) for i in snapshot.running] if JobStatus.IN_PROGRESS in wanted else []
    if JobStatus.PENDING in wanted:
        jobs += [queued_job(i, JobStatus.PENDING) for i in snapshot.pending]
    if wanted & {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}:
        finished = [finished_job(item) for item in await service.history(None, 0)]
        jobs += [j for j in finished if JobStatus(j["status"]) in wanted]
    if workflow_id := query.get("workflow_id"):
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
    jobs = sort_jobs(jobs, sort_by, sort_order == "desc")
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
    return {"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                         "has_more": offset + len(page) < total}}


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, service: Service) -> JSONResponse:
    item = await service.history_item(job_id)
    if item is not None:
        return JSONResponse(finished_job(item, with_details=True))
    snapshot = await service.queue()
    for items, status in ((snapshot.running, JobStatus.IN_PROGRESS), (snapshot.pending, JobStatus.PENDING)):
        for queued in items:
            if queued.prompt_id == job_id:
                return JSONResponse(queued_job(queued, status))
    return error_response(404, "Job not found")


@router.post("/jobs/cancel")
async def cancel_jobs(request: Request, service: Service) -> JSONResponse:
    body = await read_body(request, CancelJobsRequest)
    invalid = [j if isinstance(j, str) else repr(j) for j in body.job_ids if not is_canonical_uuid(j)]
    if invalid:
        return error_response(400, "job_ids holds ids that are not UUIDs", invalid_ids=invalid)
    results = [await service.cancel(job_id) for job_id in body.job_ids]
    return JSONResponse({"cancelled": any(results)})


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, service: Service) -> dict:
    return {"cancelled": await service.cancel(job_id)}
