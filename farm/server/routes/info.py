"""What the server offers: /object_info[/{class}], /system_stats, /models, /models/{folder},
/embeddings, /features."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import farm
from farm.models.store import FOLDER_KINDS, ModelFolders
from farm.server.config import COMFYUI_API_VERSION
from farm.server.deps import State
from farm.server.wire import system_stats_out

router = APIRouter()


@router.get("/object_info")
async def object_info(state: State) -> JSONResponse:
    # COMBO choices list the model folders: read them off the event loop.
    return JSONResponse(await run_in_threadpool(state.registry.object_info, state.node_ctx))


@router.get("/object_info/{class_type}")
async def object_info_class(class_type: str, state: State) -> JSONResponse:
    """{} for an unknown class, as in ComfyUI."""
    return JSONResponse(await run_in_threadpool(state.registry.object_info, state.node_ctx, class_type))


def memory_bytes() -> tuple[int, int]:
    """(total, available) RAM of this machine."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def system_section() -> dict:
    """ComfyUI's "system" block, for the machine that runs this server (the head node)."""
    ram_total, ram_free = memory_bytes()
    return {
        "os": sys.platform,
        "ram_total": ram_total,
        "ram_free": ram_free,
        "comfyui_version": COMFYUI_API_VERSION,
        "farm_version": farm.__version__,
        "python_version": sys.version,
        "pytorch_version": _package_version("torch"),  # without importing torch into the server
        "embedded_python": False,
        "argv": sys.argv,
        "hostname": platform.node(),
    }


@router.get("/system_stats")
async def system_stats(state: State) -> dict:
    """Devices are every GPU of the farm (none while no farm is attached)."""
    devices = await state.service.devices() if state.service is not None else []
    return system_stats_out(system_section(), devices)


@router.get("/models")
async def model_folders() -> list[str]:
    return list(FOLDER_KINDS)


@router.get("/models/{folder}")
async def models_in(folder: str, state: State) -> Response:
    if folder not in FOLDER_KINDS:
        return Response(status_code=404)
    names = await run_in_threadpool(ModelFolders(Path(state.config.models_dir)).names, folder)
    return JSONResponse(names)


@router.get("/embeddings")
async def embeddings(state: State) -> list[str]:
    names = await run_in_threadpool(ModelFolders(Path(state.config.models_dir)).names, "embeddings")
    return [os.path.splitext(n)[0] for n in names]


def server_features(max_body_bytes: int) -> dict:
    """What a client may rely on (ComfyUI's feature flags, where the farm has them)."""
    return {
        # previews go to a client that announced it too as frames of type 4 (with node and prompt)
        "supports_preview_metadata": True,
        "max_upload_size": max_body_bytes,
    }


@router.get("/features")
async def features(state: State) -> dict:
    return server_features(state.config.max_body_bytes)
