"""create_app: the server's parts put together. Each ComfyUI route is served at its own
path and again under /api (ComfyUI does both); the jobs API lives under /api only."""
from __future__ import annotations

from fastapi import FastAPI

import farm
from farm.server.config import ServerConfig
from farm.server.deps import ServerState
from farm.server.http_errors import install_error_handlers
from farm.server.routes import (
    dashboard,
    farm_routes,
    files,
    frontend,
    history,
    info,
    jobs,
    metrics,
    model_library,
    prompt,
    queue,
    userdata,
    ws,
)
from farm.server.routes.frontend import frontend_status, install_frontend
from farm.server.security import BodyLimit, OriginPolicy, TokenAuth
from farm.service import FarmService

COMFY_ROUTERS = (prompt.router, queue.router, history.router, files.router, info.router, ws.router,
                 userdata.router, frontend.router, model_library.router)


def create_app(service: FarmService | None, config: ServerConfig) -> FastAPI:
    """service None: a server with no farm behind it. It validates prompts (POST /prompt
    answers a bad one with ComfyUI's 400), serves /object_info, files and uploads, and
    answers 503 where a queue is needed."""
    state = ServerState.build(service, config)
    app = FastAPI(title="renderfarm", version=farm.__version__, lifespan=state.lifespan,
                  description="ComfyUI-compatible API of a render farm. ComfyUI's own routes (/prompt, /queue, "
                              "/history, /view, /upload/image, /object_info, /ws, /api/jobs, ...) behave as "
                              "ComfyUI documents them and are not listed here.")
    app.state.farm = state
    for router in COMFY_ROUTERS:
        app.include_router(router, include_in_schema=False)
        app.include_router(router, prefix="/api", include_in_schema=False)
    app.include_router(jobs.router, prefix="/api", include_in_schema=False)
    app.include_router(farm_routes.router)
    app.include_router(metrics.router)  # Prometheus scrapes /metrics only
    app.include_router(farm_routes.router, prefix="/api", include_in_schema=False)
    app.include_router(dashboard.router, include_in_schema=False)
    install_error_handlers(app)
    # Added innermost first: a request meets the origin check, then the token, then the body cap.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(TokenAuth, token=state.token)
    app.add_middleware(OriginPolicy, cors_origin=config.cors_origin)
    install_frontend(app, config.frontend_root, config.web_ui)  # last: it answers every path no route above took
    return app


def serve(service: FarmService | None, config: ServerConfig) -> None:
    """Run the server in this thread until interrupted (what `farm serve` calls)."""
    import logging

    import uvicorn

    app = create_app(service, config)
    print(frontend_status(app))
    if config.host not in ("127.0.0.1", "::1", "localhost") and app.state.farm.token is None:
        logging.getLogger(__name__).warning(
            "serving on %s without a token: anyone who can reach this port can queue work and read "
            "outputs; set FARM_TOKEN", config.host)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
