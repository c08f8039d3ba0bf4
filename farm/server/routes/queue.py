"""The queue and the prompts in it: GET/POST /queue, POST /interrupt, POST /free."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from farm.server.deps import Service, parse_body, read_body, read_json
from farm.server.http_errors import BadRequest
from farm.server.wire import FreeRequest, InterruptRequest, ItemsAction, queue_out

router = APIRouter()


@router.get("/queue")
async def get_queue(service: Service) -> dict:
    return queue_out(await service.queue())


@router.post("/queue")
async def post_queue(request: Request, service: Service) -> Response:
    action = await read_body(request, ItemsAction)
    if action.clear:
        await service.clear_queue()
    if action.delete:
        await service.delete_queued(action.delete)
    return Response(status_code=200)


@router.post("/interrupt")
async def post_interrupt(request: Request, service: Service) -> Response:
    """No body, or no prompt_id, interrupts every running prompt; with a prompt_id only
    that one, and only if it is running."""
    try:  # ComfyUI reads an unreadable body as "interrupt everything"
        prompt_id = parse_body(InterruptRequest, await read_json(request)).prompt_id
    except BadRequest:
        prompt_id = None
    await service.interrupt(prompt_id or None)
    return Response(status_code=200)


@router.post("/free")
async def post_free(request: Request, service: Service) -> Response:
    action = await read_body(request, FreeRequest)
    await service.free(action.unload_models, action.free_memory)
    return Response(status_code=200)
