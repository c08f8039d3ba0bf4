"""Everything the HTTP server is told at start-up; one frozen record, no globals."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from farm.models.store import ModelFolders
from farm.nodes.spec import NodeContext
from farm.settings import Limits, default_limits

TOKEN_ENV = "FARM_TOKEN"
COMFYUI_API_VERSION = "0.27.0"  # the ComfyUI server whose HTTP/websocket API this one speaks
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024  # ComfyUI's default --max-upload-size (100 MB)


@dataclass(frozen=True)
class ServerConfig:
    models_dir: Path  # ComfyUI-style models/ (checkpoints/, loras/, embeddings/, ...)
    input_dir: Path  # uploads land here; LoadImage reads from here
    output_dir: Path  # SaveImage writes here; /view type=output
    temp_dir: Path  # PreviewImage writes here; /view type=temp
    limits: Limits = field(default_factory=default_limits)  # caps on prompts (farm.settings)
    host: str = "127.0.0.1"  # loopback unless the operator opens it up (then set a token)
    port: int = 8188  # ComfyUI's port, so clients work unchanged
    token: str | None = None  # required on every route and the websocket when set; None: $FARM_TOKEN
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413
    cors_origin: str | None = None  # ComfyUI's --enable-cors-header: allow this origin instead of the loopback origin check
    ws_outbox_frames: int = 1024  # per-socket queue bound (see events.Subscriber)
    user_dir: Path | None = None  # saved settings and workflows; None: user/ beside input/, as in ComfyUI
    frontend_root: Path | None = None  # the web UI's static files; None: comfyui-frontend-package's, if installed
    web_ui: bool = True  # False: the API only; / says how to get the UI
    model_source: str | None = None  # its files are listed and accepted too (farm.models.source)

    @classmethod
    def under(cls, root: Path, **options) -> "ServerConfig":
        """The ComfyUI layout below one folder: models/, input/, output/, temp/."""
        root = Path(root)
        return cls(root / "models", root / "input", root / "output", root / "temp", **options)

    def user_folder(self) -> Path:
        return Path(self.user_dir) if self.user_dir is not None else Path(self.input_dir).parent / "user"

    def effective_token(self) -> str | None:
        return self.token or os.environ.get(TOKEN_ENV) or None

    def node_context(self) -> NodeContext:
        return NodeContext(ModelFolders(Path(self.models_dir), source=self.model_source), Path(self.input_dir), Path(self.output_dir),
                           Path(self.temp_dir), self.limits)

    def folder_for(self, kind: str) -> Path | None:
        """The folder behind a /view or /upload "type"; None for an unknown type."""
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(kind)
