"""GET /farm: the farm's dashboard, one static page (farm/server/dashboard/) whose script
polls the read-only routes /workers, /queue and /history. Nothing to build; with a token
configured, open /farm?token=... once and the cookie TokenAuth sets covers its requests."""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter()

PAGE_FILES = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


def _page_file(name: str) -> Response:
    body = resources.files("farm.server.dashboard").joinpath(name).read_bytes()
    # Revalidated on each load, so an upgraded farm never runs a stale script.
    return Response(body, media_type=PAGE_FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/farm")
async def dashboard() -> Response:
    return _page_file("index.html")


@router.get("/farm/dashboard.js")
async def dashboard_script() -> Response:
    return _page_file("dashboard.js")
