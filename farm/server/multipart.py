"""multipart/form-data, read from a body already in memory (the body cap bounds it).

Starlette's own form parser needs the python-multipart package; uploads here are single
images of at most the body cap, so a split on the boundary is all that is needed, and the
stdlib's header parser handles quoting and RFC 2231 file names.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.message import Message


class MultipartError(ValueError):
    """The body is not the multipart/form-data its Content-Type says."""


@dataclass(frozen=True)
class Part:
    name: str  # the form field
    filename: str | None  # set for file fields (possibly ""); None for plain fields
    content_type: str | None
    data: bytes

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def boundary_of(content_type: str) -> bytes:
    message = _header_params("content-type", content_type)
    if message.get_content_type() != "multipart/form-data":
        raise MultipartError(f"expected multipart/form-data, got {message.get_content_type()!r}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError("the Content-Type has no boundary")
    return boundary.encode("latin-1")


def _parse_part(chunk: bytes) -> Part:
    if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
        raise MultipartError("a part is not framed by CRLF")
    head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
    if not sep:
        raise MultipartError("a part has no blank line after its headers")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip().lower()] = value.strip()
    disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
    name = disposition.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise MultipartError("a part has no form field name")
    filename = disposition.get_filename()  # decodes filename*= as well
    if filename is None and "filename" in headers.get("content-disposition", ""):
        filename = ""
    return Part(name, filename, headers.get("content-type"), data)


def parse_form(body: bytes, content_type: str) -> dict[str, Part]:
    """Field name -> part (the first, when a name repeats)."""
    delimiter = b"--" + boundary_of(content_type)
    chunks = body.split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise MultipartError("the body does not end with the closing boundary")
    form: dict[str, Part] = {}
    for chunk in chunks[1:-1]:
        part = _parse_part(chunk)
        form.setdefault(part.name, part)
    return form
