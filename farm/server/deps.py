"""What route handlers are given: the server's state, the farm service (or a 503 when none
is attached), and helpers that read a request body or raise a 400 that says what is wrong."""
from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Annotated, AsyncIterator, TypeVar

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection, Request

from farm.nodes.registry import NodeRegistry, default_registry
from farm.nodes.spec import NodeContext
from farm.server.broadcast import Broadcaster
from farm.server.config import ServerConfig
from farm.server.http_errors import BadRequest, NoFarmAttached, describe
from farm.service import FarmService

Body = TypeVar("Body", bound=BaseModel)


@dataclass
class ServerState:
    """Built once by create_app; every handler reaches it through `app.state.farm`."""

    config: ServerConfig
    service: FarmService | None  # None: no farm attached; routes that need one answer 503
    registry: NodeRegistry
    node_ctx: NodeContext  # folders and limits that validation and /object_info see
    broadcaster: Broadcaster
    token: str | None  # resolved from the config or $FARM_TOKEN
    _pump: asyncio.Task | None = field(default=None, repr=False)

    @classmethod
    def build(cls, service: FarmService | None, config: ServerConfig,
              registry: NodeRegistry | None = None) -> "ServerState":
        return cls(config, service, registry or default_registry(), config.node_context(),
                   Broadcaster(config.ws_outbox_frames), config.effective_token())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        if self.service is not None:
            self._pump = asyncio.create_task(self.broadcaster.pump(self.service.events), name="farm-events")
        try:
            yield
        finally:
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump
            self.broadcaster.close_all()


def get_state(conn: HTTPConnection) -> ServerState:
    return conn.app.state.farm


def require_farm(conn: HTTPConnection) -> FarmService:
    service = get_state(conn).service
    if service is None:
        raise NoFarmAttached()
    return service


State = Annotated[ServerState, Depends(get_state)]
Service = Annotated[FarmService, Depends(require_farm)]


async def read_json(request: Request) -> object:
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
        # JSON may spell a lone UTF-16 surrogate ("\\ud800"), which is no text: refused here,
        # or every answer that echoes it (an error, history) could not be written
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except UnicodeEncodeError:
        raise BadRequest("the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is "
                         "not text: send valid Unicode") from None
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also an int of over 4300 digits
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder's own guard, far deeper than the farm's cap
        raise BadRequest("the request body is nested too deeply to read") from None


def parse_body(model: type[Body], data: object) -> Body:
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"bad request body: {describe(exc.errors())}") from None


async def read_body(request: Request, model: type[Body]) -> Body:
    return parse_body(model, await read_json(request))
