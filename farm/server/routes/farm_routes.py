"""The farm's own routes (not in ComfyUI), described at /openapi.json:
GET /workers (every GPU worker: what it holds, how busy it is) and POST /batch (one
workflow queued many times with per-prompt overrides, e.g. a seed sweep)."""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from farm.errors import FarmError
from farm.server.deps import Service, State, require_farm
from farm.server.http_errors import (
    PromptRejected,
    reject,
    rejected_response,
)
from farm.server.submission import Validated, submit_request, validate_prompt
from farm.server.wire import (
    BatchRequest,
    BatchResponse,
    WorkerOut,
    number_out,
    worker_out,
)
from farm.workflow.prepare import to_api_format

router = APIRouter(tags=["farm"])

ERROR_400 = {400: {"description": 'a bad override key, or a variant that fails validation: '
                                  '{"error": {type, message, details, extra_info}, "node_errors", "index"} '
                                  '(ComfyUI\'s /prompt 400, and the index of the variant)'}}


@router.get("/workers", response_model=list[WorkerOut], summary="The farm's GPU workers")
async def workers(service: Service) -> list[WorkerOut]:
    return [worker_out(w) for w in await service.workers()]


def override_key_problem(prompt: dict, override: dict, registry) -> str | None:
    """Every key must name a node of the workflow and an input that node has (given, or
    declared by its class), so that a typo is refused instead of rendering the unchanged
    workflow N times. The first bad key's problem, or None."""
    for key in override:
        node_id, dot, input_name = key.partition(".")
        if not dot or not node_id or not input_name:
            return f"key {key!r} must look like NODE_ID.INPUT, e.g. \"3.seed\""
        node = prompt.get(node_id)
        if not isinstance(node, dict):
            return f"key {key!r}: the workflow has no node {node_id!r}"
        spec = registry.spec(node.get("class_type"))
        given = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        if input_name not in given and (spec is None or spec.input(input_name) is None):
            known = sorted(set(given) | {i.name for i in (spec.inputs if spec else ())})
            return (f"key {key!r}: node {node_id} ({node.get('class_type')}) has no input "
                    f"{input_name!r}; its inputs are {', '.join(known)}")
    return None


@router.post("/batch", response_model=BatchResponse, responses=ERROR_400,
             summary="Queue one workflow once per override dict")
async def batch(body: BatchRequest, request: Request, state: State) -> BatchResponse | JSONResponse:
    """Every variant is validated before any is queued: a batch is queued whole or not
    at all (unless the farm itself fails midway)."""
    try:
        prompt = await run_in_threadpool(to_api_format, body.prompt, state.registry)
    except FarmError as exc:
        return rejected_response(reject("invalid_prompt", "the workflow cannot be read", str(exc)), index=None)
    for index, override in enumerate(body.overrides):
        problem = override_key_problem(prompt, override, state.registry)
        if problem is not None:  # the same 400 body as a variant that fails validation
            return rejected_response(reject("invalid_prompt", f"overrides[{index}] has a bad key", problem),
                                     index=index)
    validated: list[Validated] = []
    for index, override in enumerate(body.overrides):
        try:
            validated.append(await validate_prompt(state, prompt, str(uuid.uuid4()), overrides=override))
        except PromptRejected as rejected:
            return rejected_response(rejected, index=index)
    service = require_farm(request)
    results = [await service.submit(submit_request(v, body.extra_data, body.client_id, None, body.front))
               for v in validated]
    return BatchResponse(prompt_ids=[r.prompt_id for r in results], numbers=[number_out(r.number) for r in results],
                         node_errors=[v.prepared.node_errors for v in validated])
