"""The ComfyUI-compatible HTTP + WebSocket API of the farm.

    app = create_app(service, ServerConfig.under(root))   # service: a FarmService, or None
    uvicorn.run(app, host=config.host, port=config.port)

The server validates and translates; the farm (queue, workers, history) sits behind the
FarmService protocol in farm.server.service.
"""
from farm.server.app import create_app, serve
from farm.server.config import ServerConfig
from farm.server.events import EventType, FarmEvent, ImageFormat, PreviewImage
from farm.server.service import FarmService

__all__ = ["EventType", "FarmEvent", "FarmService", "ImageFormat", "PreviewImage", "ServerConfig", "create_app", "serve"]
