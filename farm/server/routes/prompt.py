"""POST /prompt (validate, then queue) and GET /prompt (queue size)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from farm.errors import DuplicatePromptError
from farm.server.deps import Farm, State, parse_body, read_json, require_farm
from farm.server.submission import (
    PromptRejected,
    check_prompt_id,
    check_request_caps,
    reject,
    submit_request,
    validate_prompt,
)
from farm.server.wire import PromptRequest, number_out

router = APIRouter()


@router.get("/prompt")
async def get_prompt(farm: Farm) -> dict:
    return {"exec_info": {"queue_remaining": await farm.queue_remaining()}}


@router.post("/prompt")
async def post_prompt(request: Request, state: State) -> JSONResponse:
    """Validation answers before the farm is asked anything, so a bad prompt costs the
    farm nothing; only a valid one needs the farm."""
    data = await read_json(request)
    try:
        await run_in_threadpool(check_request_caps, data, state)  # a big body takes a while to walk
        body = parse_body(PromptRequest, data)
        if body.prompt is None:
            raise reject("no_prompt", "no prompt in the request", 'send {"prompt": <API-format workflow>}')
        prompt_id = check_prompt_id(body.prompt_id)
        validated = await validate_prompt(state, body.prompt, prompt_id, body.partial_execution_targets)
    except PromptRejected as rejected:
        return JSONResponse(rejected.body, status_code=400)
    farm = require_farm(request)
    try:
        result = await farm.submit(submit_request(validated, body.extra_data or {}, body.client_id, body.number,
                                                  bool(body.front)))
    except DuplicatePromptError:
        return JSONResponse({"error": "prompt_id already exists"}, status_code=409)
    return JSONResponse({"prompt_id": result.prompt_id, "number": number_out(result.number),
                         "node_errors": validated.prepared.node_errors})
