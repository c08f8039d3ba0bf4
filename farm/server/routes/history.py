"""Finished prompts: GET /history[?max_items=&offset=], GET /history/{prompt_id}, POST /history."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from farm.server.deps import Service, read_body
from farm.server.http_errors import BadRequest
from farm.server.wire import ItemsAction, history_item_out, history_out

router = APIRouter()


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None


@router.get("/history")
async def get_history(request: Request, service: Service) -> dict:
    """Oldest first. Without offset: the newest max_items (ComfyUI's default); with it:
    max_items starting that many from the oldest."""
    max_items = _int_param(request, "max_items")
    offset = _int_param(request, "offset")
    if max_items is not None and max_items < 0:
        raise BadRequest("max_items must not be negative")
    if offset is None:  # the newest max_items (all of them without max_items): count from the end
        offset = 0 if max_items is None else -max_items
    return history_out(await service.history(max_items, offset))


@router.get("/history/{prompt_id}")
async def get_history_item(prompt_id: str, service: Service) -> dict:
    """{} while the prompt is queued, running or unknown, as in ComfyUI."""
    item = await service.history_item(prompt_id)
    return {} if item is None else {item.prompt_id: history_item_out(item)}


@router.post("/history")
async def post_history(request: Request, service: Service) -> Response:
    action = await read_body(request, ItemsAction)
    if action.clear:
        await service.clear_history()
    if action.delete:
        await service.delete_history(action.delete)
    return Response(status_code=200)
