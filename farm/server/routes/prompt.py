"""POST /prompt (validate, then queue) and GET /prompt (queue size)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from farm.errors import DuplicatePromptError
from farm.server.deps import Service, State, parse_body, read_json, require_farm
from farm.server.http_errors import (
    BadRequest,
    PromptRejected,
    duplicate_prompt_response,
    reject,
    rejected_response,
)
from farm.server.submission import (
    check_prompt_id,
    check_request_caps,
    submit_request,
    validate_prompt,
)
from farm.server.wire import PromptRequest, number_out

router = APIRouter()


@router.get("/prompt")
async def get_prompt(service: Service) -> dict:
    return {"exec_info": {"queue_remaining": await service.queue_remaining()}}


@router.post("/prompt")
async def post_prompt(request: Request, state: State) -> JSONResponse:
    """Validation answers before the farm is asked anything, so a bad prompt costs the
    farm nothing; only a valid one needs the farm."""
    try:
        data = await read_json(request)
        await run_in_threadpool(check_request_caps, data, state)  # a big body takes a while to walk
        body = parse_body(PromptRequest, data)
        if body.prompt is None:
            raise reject("no_prompt", "no prompt in the request", 'send {"prompt": <API-format workflow>}')
        prompt_id = check_prompt_id(body.prompt_id)
        validated = await validate_prompt(state, body.prompt, prompt_id, body.partial_execution_targets)
    except BadRequest as exc:  # ComfyUI's clients read every 400 of /prompt as {"error": {...}, "node_errors"}
        return rejected_response(reject("invalid_prompt", "the request body cannot be read", exc.detail))
    except PromptRejected as rejected:
        return rejected_response(rejected)
    service = require_farm(request)
    try:
        result = await service.submit(submit_request(validated, body.extra_data or {}, body.client_id, body.number,
                                                  bool(body.front)))
    except DuplicatePromptError:
        return duplicate_prompt_response()
    return JSONResponse({"prompt_id": result.prompt_id, "number": number_out(result.number),
                         "node_errors": validated.prepared.node_errors})
