"""ComfyUI's own web UI at /.

The UI is the static build in the `comfyui-frontend-package` wheel (GPL-3.0): a runtime
dependency the user installs (`pip install 'renderfarm[ui]'`), never shipped here. Without
it / is a short page saying how to get it; the API is unaffected.

Also the routes about the frontend's own content that it calls at start, answered as
ComfyUI answers them when no custom node adds anything (the farm has no custom nodes
and ships no template package): /extensions (the frontend's own extension scripts),
/i18n, /workflow_templates, /global_subgraphs ({}: none), and the core template index
/templates/index.json ([]: no templates; a 404 there is logged by the UI as an error).
"""
from __future__ import annotations

import html
from importlib import metadata, resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from farm.errors import FarmError

router = APIRouter()

FRONTEND_PACKAGE = "comfyui-frontend-package"
INSTALL_HINT = "pip install 'renderfarm[ui]'"  # the extra that pulls comfyui-frontend-package


class FrontendNotFound(FarmError):
    """A configured frontend folder without an index.html."""


def find_frontend(configured: Path | None) -> Path | None:
    """The folder to serve at /: the configured one, else the installed package's static
    folder (where ComfyUI looks too), else None."""
    if configured is not None:
        root = Path(configured)
        if not (root / "index.html").is_file():
            raise FrontendNotFound(f"the frontend folder {root} has no index.html; point it at a built "
                                   f"ComfyUI frontend, or leave it unset and {INSTALL_HINT}")
        return root
    try:
        static = resources.files("comfyui_frontend_package") / "static"
    except ModuleNotFoundError:
        return None
    root = Path(str(static))
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str:
    try:
        return metadata.version(FRONTEND_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


class FrontendFiles(StaticFiles):
    """The UI's files; index.html and scripts are revalidated on every load, so an
    upgraded package is picked up without a stale cached copy (ComfyUI does the same)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def revalidating(message) -> None:
            if message["type"] == "http.response.start":
                path = scope.get("path", "")
                if path.endswith(("/", ".html", ".js", ".css")):
                    message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-cache")]}
            await send(message)

        await super().__call__(scope, receive, revalidating)


def no_frontend_page() -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>renderfarm</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42em;margin:3em auto;padding:0 1em}}
code{{background:#eee;padding:.1em .3em}}</style></head><body>
<h1>renderfarm</h1>
<p>This farm speaks ComfyUI's API, but ComfyUI's web UI is not installed on this server.
To use it, install it where <code>farm serve</code> runs and restart the server:</p>
<p><code>{html.escape(INSTALL_HINT, quote=False)}</code></p>
<p>(that installs <code>{FRONTEND_PACKAGE}</code>, ComfyUI's frontend, GPL-3.0).</p>
<p>Meanwhile: the <a href="farm">farm dashboard</a>, the <a href="docs">farm's own API</a>.</p>
</body></html>"""


@router.get("/extensions")
async def extensions(request: Request) -> list[str]:
    root = request.app.state.frontend_root
    if root is None:
        return []
    return sorted("/" + p.relative_to(root).as_posix() for p in (root / "extensions").rglob("*.js"))


@router.get("/i18n")
async def i18n() -> dict:
    return {}  # custom nodes' translations, by locale


@router.get("/workflow_templates")
async def workflow_templates() -> dict:
    return {}  # custom node -> its template workflows


@router.get("/global_subgraphs")
async def global_subgraphs() -> dict:
    return {}  # id -> subgraph blueprint shipped by custom nodes


# The core templates come from the comfyui-workflow-templates package on ComfyUI; the farm
# has none, so the UI's template browser opens empty instead of failing. Root paths only.
templates_router = APIRouter()


@templates_router.get("/templates/index.json")
async def template_index() -> list:
    return []


@templates_router.get("/templates/index_logo.json")
async def template_logos() -> dict:
    return {}


def install_frontend(app: FastAPI, configured: Path | None, enabled: bool = True) -> None:
    """Mount the UI at / (call last: the mount answers every path no route took)."""
    root = app.state.frontend_root = find_frontend(configured) if enabled else None
    if root is None:
        async def index() -> HTMLResponse:
            return HTMLResponse(no_frontend_page())

        app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
        return
    app.include_router(templates_router, include_in_schema=False)
    app.mount("/", FrontendFiles(directory=root, html=True), name="frontend")


def frontend_status(app: FastAPI) -> str:
    """The start-up line that says whether / is the UI."""
    root = app.state.frontend_root
    if root is None:
        return f"web UI: not served, / says how to get it ({INSTALL_HINT})"
    return f"web UI: ComfyUI frontend {frontend_version()} from {root}"
