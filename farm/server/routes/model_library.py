"""The UI's model library: ComfyUI's GET /experiment/models (each model folder and where
it is on disk), GET /experiment/models/{folder} (its files with size and times), and
GET /internal/folder_paths (each model folder's paths, which the UI reads at times)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from farm.models.store import FOLDER_KINDS, ModelFolders
from farm.server.deps import State

router = APIRouter()


@router.get("/experiment/models")
async def model_folders(state: State) -> list[dict]:
    folders = ModelFolders(Path(state.config.models_dir))
    return [{"name": kind, "folders": [str(folders.folder(kind))]} for kind in FOLDER_KINDS]


@router.get("/internal/folder_paths")
async def folder_paths(state: State) -> dict[str, list[str]]:
    folders = ModelFolders(Path(state.config.models_dir))
    return {kind: [str(path) for path in folders.folders(kind)] for kind in FOLDER_KINDS}


def model_files(folders: ModelFolders, kind: str) -> list[dict]:
    """One entry per listed model; pathIndex 0 because the farm has one folder per kind."""
    out = []
    for name in folders.names(kind):
        path = folders.folder(kind) / name
        stat = path.stat()
        out.append({"name": name, "pathIndex": 0, "modified": stat.st_mtime, "created": stat.st_ctime,
                     "size": folders.size_bytes(kind, name)})
    return out


@router.get("/experiment/models/{folder}")
async def models_in(folder: str, state: State) -> Response:
    if folder not in FOLDER_KINDS:
        return Response(status_code=404)
    return JSONResponse(await run_in_threadpool(model_files, ModelFolders(Path(state.config.models_dir)), folder))
