"""The multipart reader against bodies built by httpx's encoder (an independent writer)."""
from __future__ import annotations

import os

import httpx
import pytest

from farm.server.multipart import MultipartError, parse_form


def encoded(files=None, data=None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/upload", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_fields_and_binary_file_survive_byte_for_byte():
    payload = os.urandom(5000) + b"\r\n--\r\n\r\n" + bytes(range(256))  # CRLFs and dashes inside the file
    body, content_type = encoded(files={"image": ("shot 1.png", payload, "image/png")},
                                 data={"type": "input", "subfolder": "a/b", "overwrite": "true"})
    form = parse_form(body, content_type)
    assert form["image"].data == payload
    assert form["image"].filename == "shot 1.png"
    assert form["image"].content_type == "image/png"
    assert (form["type"].text(), form["subfolder"].text(), form["overwrite"].text()) == ("input", "a/b", "true")
    assert form["type"].filename is None


def test_empty_file_and_unicode_name():
    body, content_type = encoded(files={"image": ("ünï.png", b"", "image/png")})
    form = parse_form(body, content_type)
    assert form["image"].data == b""
    assert form["image"].filename == "ünï.png"


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", "text/plain; boundary=x"])
def test_wrong_content_type(content_type):
    with pytest.raises(MultipartError):
        parse_form(b"--x\r\n\r\n--x--", content_type)


def test_truncated_body():
    body, content_type = encoded(files={"image": ("a.png", b"12345", "image/png")})
    with pytest.raises(MultipartError):
        parse_form(body[:-10], content_type)
