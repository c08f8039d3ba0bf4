"""Files in input/, output/ and temp/: GET /view and POST /upload/image.

Path rules are ComfyUI's: a filename that starts with "/" or holds ".." is a 400; a
subfolder that climbs out of its folder is a 403 (on /view) or a 400 (on upload). Paths
are compared after resolving symlinks, so a link inside output/ cannot expose the disk.
"""
from __future__ import annotations

import errno
import io
import mimetypes
import os
import warnings
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from farm.server.deps import State
from farm.server.http_errors import BadRequest, error_response
from farm.server.multipart import MultipartError, Part, parse_form

router = APIRouter()

ANNOTATIONS = ("output", "input", "temp")  # "name.png [input]" picks the folder, as in ComfyUI
# Types a browser would run or render as a page: always sent as downloads.
ACTIVE_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/javascript", "application/javascript",
                                  "text/css", "image/svg+xml", "application/xml", "text/xml"})


class Escapes(Exception):
    """A path that resolves outside its folder."""


def inside(root: Path, *parts: str) -> Path:
    """root/parts resolved, or Escapes when that leaves root (absolute parts, "..",
    symlinks pointing elsewhere, NUL bytes)."""
    base = root.resolve()
    try:
        target = base.joinpath(*parts).resolve()
    except (ValueError, OSError):
        raise Escapes() from None
    if target != base and base not in target.parents:
        raise Escapes()
    return target


def split_annotation(name: str) -> tuple[str, str | None]:
    for kind in ANNOTATIONS:
        if name.endswith(f"[{kind}]"):
            return name[: -len(kind) - 2].rstrip(), kind
    return name, None


# --- /view ------------------------------------------------------------------------------


@router.get("/view")
async def view(request: Request, state: State) -> Response:
    query = request.query_params
    if "filename" not in query:
        return Response(status_code=404)
    filename, annotated = split_annotation(query["filename"])
    if not filename or filename.startswith("/") or ".." in filename:
        return Response(status_code=400)
    folder = state.config.folder_for(annotated or query.get("type", "output"))
    if folder is None:
        return Response(status_code=400)
    try:
        directory = inside(Path(folder), query["subfolder"]) if "subfolder" in query else Path(folder).resolve()
    except Escapes:
        return Response(status_code=403)
    name = os.path.basename(filename)
    path = directory / name
    try:
        found = bool(name) and path.is_file()
    except OSError:  # a name longer than the filesystem takes (ENAMETOOLONG) names no file
        found = False
    if not found:
        return Response(status_code=404)
    disposition = {"Content-Disposition": _disposition(name)}
    if "preview" in query:
        body, content_type = await run_in_threadpool(_preview, path, query["preview"], query.get("channel", ""))
        return Response(body, media_type=content_type, headers=disposition)
    channel = query.get("channel", "rgba")
    if channel in ("rgb", "a"):
        body = await run_in_threadpool(_channel_png, path, channel)
        return Response(body, media_type="image/png", headers=disposition)
    return _file_response(path, name)


def _disposition(name: str) -> str:
    """filename="..." for ASCII names; RFC 5987 for others (headers travel as latin-1)."""
    if name.isascii():
        return 'filename="{}"'.format(name.replace("\\", "\\\\").replace('"', '\\"'))
    return f"filename*=UTF-8''{quote(name, safe='')}"


def _file_response(path: Path, name: str) -> FileResponse:
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    disposition = _disposition(name)
    if content_type in ACTIVE_CONTENT_TYPES:  # a stored page must not run in this origin
        content_type, disposition = "application/octet-stream", "attachment; " + disposition
    headers = {"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type=content_type, headers=headers)


def _preview(path: Path, spec: str, channel: str) -> tuple[bytes, str]:
    """?preview=webp;90 or jpeg;80: a re-encoded copy (webp when alpha is asked for)."""
    parts = spec.split(";")
    image_format = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
    # isdecimal and ASCII: "²".isdigit() holds but int() refuses it; Pillow refuses a quality past 100
    quality = min(100, int(parts[-1])) if parts[-1].isascii() and parts[-1].isdecimal() else 90
    with Image.open(path) as img:
        if image_format == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        buffer = io.BytesIO()
        img.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue(), f"image/{image_format}"


def _channel_png(path: Path, channel: str) -> bytes:
    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:  # the alpha channel, as the alpha of an otherwise empty RGBA image
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
    return buffer.getvalue()


# --- /upload/image ----------------------------------------------------------------------


def check_image(data: bytes) -> None:
    """Refuse what Pillow cannot read as an image, and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadRequest(f"the uploaded image is too large to decode safely: {exc}") from None
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise BadRequest(f"the uploaded file is not an image Pillow can read ({type(exc).__name__}: {exc})") from None


def _claim(path: Path, data: bytes) -> bool:
    """Create path with data unless it exists; atomic, so two uploads never share a name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:  # a full disk: leave no truncated file that a later upload would be numbered around
        path.unlink(missing_ok=True)
        raise
    return True


def store_upload(folder: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Write the upload; returns the name it got. Without overwrite a taken name becomes
    "name (1).png", "name (2).png", ... unless the taken file has the same bytes, which
    is then reused (ComfyUI does both)."""
    target = inside(folder, os.path.normpath(subfolder) if subfolder else "", filename)
    if target == folder.resolve() or target.is_dir():
        raise Escapes()
    target.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        tmp = target.with_name(target.name + ".upload")
        tmp.write_bytes(data)
        tmp.replace(target)
        return filename
    stem, suffix = os.path.splitext(filename)
    name, i = filename, 1
    while not _claim(target.parent / os.path.basename(name), data):
        existing = target.parent / os.path.basename(name)
        if existing.is_file() and existing.read_bytes() == data:
            return name
        name, i = f"{stem} ({i}){suffix}", i + 1
    return name


def _field(form: dict[str, Part], name: str, default: str) -> str:
    part = form.get(name)
    return default if part is None else part.text()


@router.post("/upload/image")
async def upload_image(request: Request, state: State) -> Response:
    """multipart: image (the file), type (input | temp | output; default input),
    subfolder, overwrite ("true" or "1")."""
    try:
        form = parse_form(await request.body(), request.headers.get("content-type", ""))
    except MultipartError as exc:
        raise BadRequest(f"send the image as multipart/form-data: {exc}") from None
    image = form.get("image")
    if image is None or image.filename is None:
        raise BadRequest('the form needs a file field named "image"')
    if not image.filename:
        raise BadRequest("the uploaded file has no name")
    kind = _field(form, "type", "input") or "input"
    folder = state.config.folder_for(kind)
    if folder is None:
        raise BadRequest(f"type must be input, temp or output, not {kind!r}")
    subfolder = _field(form, "subfolder", "")
    overwrite = _field(form, "overwrite", "") in ("true", "1")
    check_image(image.data)
    try:
        name = await run_in_threadpool(store_upload, Path(folder), subfolder, image.filename, image.data, overwrite)
    except Escapes:
        return Response(status_code=400)
    except OSError as exc:  # the folder's filesystem refused it: a name it cannot hold, or no room
        if exc.errno == errno.ENAMETOOLONG:
            raise BadRequest("the file name or subfolder is longer than the filesystem allows") from None
        return error_response(507, f"the upload could not be stored in {kind}/: {exc.strerror or exc}")
    return JSONResponse({"name": name, "subfolder": subfolder, "type": kind})
