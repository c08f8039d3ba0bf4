"""From a POST /prompt (or /batch) body to a SubmitRequest: ComfyUI's checks, in its order,
with its error shapes. Validation itself is farm.workflow.prepare's (the CLI and Python API use the
same), run off the event loop because it reads folders and hashes input files."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from farm.errors import FarmError
from farm.records import comfy_errors
from farm.server.deps import ServerState
from farm.server.http_errors import PromptRejected, rejection_for
from farm.service import SubmitRequest
from farm.workflow import errors as workflow_errors
from farm.workflow.bounds import check_json
from farm.workflow.errors import ErrorType
from farm.workflow.prepare import PreparedPrompt, prepare

# Keys of extra_data that ComfyUI keeps out of the queue and history (API-node credentials).
# The farm runs no API nodes, so it drops them: they are never stored or shown.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def check_prompt_id(value: object) -> str:
    """A client-given prompt_id must be a canonical UUID: the id is compared verbatim in
    history, events and /interrupt, so another spelling would never match. None (absent
    or null) lets the server mint one. The error is the workflow package's, as for the CLI."""
    if value is None:
        return str(uuid.uuid4())
    error = workflow_errors.check_prompt_id(value)
    if error is not None:
        raise PromptRejected(comfy_errors.prompt_rejection(error.to_comfy()))
    return value


def clean_extra_data(extra_data: dict, client_id: str | None) -> dict:
    """extra_data as the queue stores it: the client's keys minus secrets, plus client_id.
    (create_time is stamped by the queue when it stores the job.)"""
    out = {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
    if client_id is not None:
        out["client_id"] = client_id
    return out


def check_request_caps(data: object, state: ServerState) -> None:
    """The caps on the whole request (extra_data too) before pydantic or anything else reads
    it; the prompt's own per-string cap is checked in prepare."""
    limits = state.node_ctx.limits
    capped = check_json(data, limits, "", per_string=False)
    if isinstance(data, dict) and capped is not None and capped.type is not ErrorType.PROMPT_TOO_DEEP:
        # a single huge prompt text is better named as that than as a too-large request
        capped = check_json(data.get("prompt"), limits, "prompt") or capped
    if capped is not None:
        raise PromptRejected(comfy_errors.prompt_rejection(capped.to_comfy()))


@dataclass(frozen=True)
class Validated:
    prepared: PreparedPrompt
    outputs_to_execute: tuple[str, ...]


def _prepare_blocking(state: ServerState, workflow: object, prompt_id: str, targets: list[str] | None,
                      overrides: dict | None) -> Validated:
    try:
        prepared = prepare(workflow, state.registry, state.node_ctx, overrides, prompt_id=prompt_id,
                           partial_execution_targets=targets)
    except FarmError as exc:
        raise rejection_for(exc) from None
    return Validated(prepared, tuple(prepared.plan.outputs))


async def validate_prompt(state: ServerState, workflow: object, prompt_id: str, targets: list[str] | None = None,
                          overrides: dict | None = None) -> Validated:
    return await run_in_threadpool(_prepare_blocking, state, workflow, prompt_id, targets, overrides)


def submit_request(validated: Validated, extra_data: dict, client_id: str | None, number: float | None,
                   front: bool) -> SubmitRequest:
    return SubmitRequest(validated.prepared, validated.outputs_to_execute, clean_extra_data(extra_data, client_id),
                         client_id, number, front)
