"""The ComfyUI-compatible HTTP + WebSocket API of the farm.

    from farm.server.app import create_app, serve
    app = create_app(service, ServerConfig.under(root))   # service: a FarmService, or None

The server validates and translates; the farm (queue, workers, history) sits behind the
FarmService protocol in farm.service.
"""
