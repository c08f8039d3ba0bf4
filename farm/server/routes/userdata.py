"""The web UI's server-side storage, with ComfyUI's routes and shapes (app/user_manager.py,
app/app_settings.py), single-user:

    GET  /users                      {"storage": "server", "migrated": bool}
    GET  /settings, /settings/{id}   all settings / one value (null when unset)
    POST /settings, /settings/{id}   merge an object / set one value
    GET  /userdata?dir=&recurse=&full_info=&split=     files of a folder
    GET  /v2/userdata?path=          folders and files below a folder
    GET|POST|DELETE /userdata/{file}, POST /userdata/{file}/move/{dest}

{file} is one URL segment with its slashes encoded ("workflows%2Fa.json"), as the
frontend sends it; the segments are read from the raw path so "/move/" is never confused
with a folder of that name.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from farm.server.deps import get_state, read_json
from farm.server.http_errors import BadRequest
from farm.server.routes.files import ACTIVE_CONTENT_TYPES
from farm.server.userdata import (
    FileInfo,
    NotADirectory,
    UserData,
    UserDataError,
    UserFileExists,
    UserFileMissing,
    UserPathRefused,
)

router = APIRouter()

STATUS = {UserPathRefused: 403, UserFileMissing: 404, UserFileExists: 409, NotADirectory: 400}
USER_CSS = "user.css"  # the one user file the page itself loads, so it is served inline


async def get_user_data(conn: HTTPConnection) -> UserData:
    """One store per app, made on first use (async, so on the event loop: no race)."""
    app_state = conn.app.state
    if getattr(app_state, "user_data", None) is None:
        app_state.user_data = UserData(get_state(conn).config.user_folder())
    return app_state.user_data


async def _call(fn, *args):
    """Run a store call off the event loop; its typed errors become ComfyUI's status codes."""
    try:
        return await run_in_threadpool(fn, *args)
    except UserDataError as exc:
        raise HTTPException(STATUS.get(type(exc), 500), str(exc)) from None


def _flag(request: Request, name: str, default: str = "false") -> bool:
    return request.query_params.get(name, default).lower() == "true"


# -- users and settings ----------------------------------------------------------------------


@router.get("/users")
async def get_users(store: UserData = Depends(get_user_data)) -> dict:
    return {"storage": "server", "migrated": await run_in_threadpool(store.exists)}


@router.post("/users")
async def post_users() -> Response:
    raise BadRequest("this farm serves one user (ComfyUI's single-user mode): there are no profiles to add")


@router.get("/settings")
async def get_settings(store: UserData = Depends(get_user_data)) -> dict:
    return await _call(store.settings)


@router.get("/settings/{setting_id}")
async def get_setting(setting_id: str, store: UserData = Depends(get_user_data)) -> Response:
    return JSONResponse((await _call(store.settings)).get(setting_id))


@router.post("/settings")
async def post_settings(request: Request, store: UserData = Depends(get_user_data)) -> Response:
    changes = await read_json(request)
    if not isinstance(changes, dict):
        raise BadRequest(f"POST /settings takes a JSON object of setting id -> value, not {type(changes).__name__}")
    await _call(store.update_settings, changes)
    return Response(status_code=200)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, request: Request, store: UserData = Depends(get_user_data)) -> Response:
    await _call(store.update_settings, {setting_id: await read_json(request)})
    return Response(status_code=200)


# -- listings --------------------------------------------------------------------------------


@router.get("/userdata")
async def list_userdata(request: Request, store: UserData = Depends(get_user_data)) -> list:
    directory = request.query_params.get("dir", "")
    if not directory:
        raise BadRequest("GET /userdata needs ?dir=<folder>, e.g. ?dir=workflows")
    folder, files = await _call(store.list_files, directory, _flag(request, "recurse"))
    if _flag(request, "full_info"):
        return [(await run_in_threadpool(_info, f, folder)) for f in files]
    paths = [f.relative_to(folder).as_posix() for f in files]
    return [[p, *p.split("/")] for p in paths] if _flag(request, "split") else paths


def _info(file: Path, folder: Path) -> dict:
    return FileInfo.of(file, folder).to_json()


@router.get("/v2/userdata")
async def list_userdata_v2(request: Request, store: UserData = Depends(get_user_data)) -> list:
    entries = await _call(store.list_entries, unquote(request.query_params.get("path", "")))
    return [e.to_json() for e in entries]


# -- one file --------------------------------------------------------------------------------


def _segments(request: Request) -> list[str]:
    """The still-encoded segments after /userdata/ (uvicorn passes the raw path)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path
    return path.split("/userdata/", 1)[1].split("/")


def _file_arg(request: Request) -> str:
    return unquote("/".join(_segments(request)))


@router.get("/userdata/{file:path}")
async def get_userdata(request: Request, store: UserData = Depends(get_user_data)) -> Response:
    relative = _file_arg(request)
    path = await _call(store.read_path, relative)
    if relative == USER_CSS:
        return FileResponse(path, media_type="text/css", headers={"X-Content-Type-Options": "nosniff"})
    # User files are whatever was uploaded: never rendered in the UI's origin.
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type in ACTIVE_CONTENT_TYPES:
        content_type = "application/octet-stream"
    return FileResponse(path, media_type=content_type, content_disposition_type="attachment",
                        filename=path.name, headers={"X-Content-Type-Options": "nosniff"})


@router.post("/userdata/{file:path}")
async def post_userdata(request: Request, store: UserData = Depends(get_user_data)) -> Response:
    segments = _segments(request)
    overwrite = _flag(request, "overwrite", "true")
    if len(segments) == 3 and segments[1] == "move":
        written = await _call(store.move, unquote(segments[0]), unquote(segments[2]), overwrite)
    else:
        relative = _file_arg(request)
        body = await request.body()
        try:
            written = await _call(store.write, relative, body, overwrite)
        except OSError as exc:
            raise BadRequest(f"cannot save {relative!r}: {exc.strerror}; avoid characters like :\\/*?\"<>|") from None
    if _flag(request, "full_info"):
        return JSONResponse((await run_in_threadpool(store.info, written)).to_json())
    return JSONResponse(store.relative(written))


@router.delete("/userdata/{file:path}")
async def delete_userdata(request: Request, store: UserData = Depends(get_user_data)) -> Response:
    await _call(store.delete, _file_arg(request))
    return Response(status_code=204)
