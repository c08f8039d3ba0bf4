"""Which answer each error gets over HTTP, in one place: a refused prompt is a 400 in
ComfyUI's {"error", "node_errors"} shape (farm.records.comfy_errors spells it), a malformed
request a 400 {"error": message}, a server without a farm (or a farm that cannot take work
now: FarmUnavailable) a 503, a duplicate prompt_id a 409.
Every route's error path ends here; routes raise or return what this module builds."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from farm.errors import FarmError, FarmUnavailable, WorkflowFormatError, one_line
from farm.records import comfy_errors
from farm.workflow.prepare import ValidationFailed


class BadRequest(HTTPException):
    """A request the server cannot read (bad JSON, a body that fails its model, a bad query
    parameter): 400 {"error": message}."""

    def __init__(self, message: str):
        super().__init__(400, message)


class NoFarmAttached(HTTPException):
    """The server runs without a farm (it validates and serves files): 503."""

    def __init__(self) -> None:
        super().__init__(503, "no farm is attached to this server: it can validate workflows and serve files, "
                              "but queueing needs a running farm (start it with the farm service)")


class PromptRejected(Exception):
    """The 400 answer to a prompt, in ComfyUI's {"error", "node_errors"} shape."""

    def __init__(self, body: dict):
        super().__init__(body["error"]["message"] if isinstance(body.get("error"), dict) else str(body))
        self.body = body


def reject(kind: str, message: str, details: str = "") -> PromptRejected:
    """A prompt refused as a whole (no node to blame)."""
    return PromptRejected(comfy_errors.prompt_rejection(comfy_errors.error_object(kind, message, details)))


def rejection_for(exc: FarmError) -> PromptRejected:
    """The 400 for a FarmError raised while reading or validating a workflow: validation's
    own node_errors when it has them, else ComfyUI's invalid_prompt naming the fault."""
    if isinstance(exc, ValidationFailed):
        return PromptRejected(exc.result.to_comfy())
    if isinstance(exc, WorkflowFormatError):
        return reject("invalid_prompt", "the workflow is not in ComfyUI's API format", str(exc))
    return reject("invalid_prompt", "the workflow cannot run", str(exc))


def rejected_response(rejected: PromptRejected, **extra) -> JSONResponse:
    """`extra` adds keys of the farm's own (POST /batch's "index")."""
    return JSONResponse({**rejected.body, **extra}, status_code=400)


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    """The farm's plain error body {"error": message} (what ComfyUI answers outside /prompt)."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def duplicate_prompt_response() -> JSONResponse:
    return error_response(409, "prompt_id already exists")


def describe(errors: list[dict]) -> str:
    """pydantic's error list as one line: "prompt: Input should be a valid dictionary; ..." """
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    """HTTP errors go out as {"error": message}, and a body that fails a pydantic model is
    a 400 (as ComfyUI answers bad input), not FastAPI's 422."""
    async def http_error(request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, exc.headers)

    async def invalid_body(request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"bad request body: {describe(exc.errors())}")

    async def farm_unavailable(request, exc: FarmUnavailable) -> JSONResponse:
        # the farm cannot take the request now (dispatcher gone, queue database locked):
        # nothing was queued, the client may send it again
        return error_response(503, one_line(exc))  # a Ray wrapper's text is a remote traceback

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(FarmUnavailable, farm_unavailable)
