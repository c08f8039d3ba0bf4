"""GET /view and POST /upload/image on a real server: path safety, image checks, naming."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image


def png_bytes(color=(255, 0, 0), size=(8, 6), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(http, data: bytes, filename="cat.png", **fields):
    return http.post("/upload/image", files={"image": (filename, data, "image/png")},
                     data={k: str(v) for k, v in fields.items()})


# --- /view ------------------------------------------------------------------------------


def test_view_serves_the_file(server):
    data = png_bytes()
    (server.config.output_dir / "a.png").write_bytes(data)
    (server.config.output_dir / "shots").mkdir()
    (server.config.output_dir / "shots" / "b.png").write_bytes(data[::-1])
    with server.client() as http:
        answer = http.get("/view", params={"filename": "a.png", "type": "output"})
        assert answer.status_code == 200
        assert answer.content == data
        assert answer.headers["content-type"] == "image/png"
        assert http.get("/api/view", params={"filename": "a.png"}).content == data  # type defaults to output
        nested = http.get("/view", params={"filename": "b.png", "subfolder": "shots"})
        assert nested.content == data[::-1]


def test_view_picks_the_folder_by_type_or_annotation(server):
    (server.config.input_dir / "in.png").write_bytes(b"input-bytes")
    (server.config.temp_dir / "t.png").write_bytes(b"temp-bytes")
    with server.client() as http:
        assert http.get("/view", params={"filename": "in.png", "type": "input"}).content == b"input-bytes"
        assert http.get("/view", params={"filename": "t.png", "type": "temp"}).content == b"temp-bytes"
        assert http.get("/view", params={"filename": "in.png [input]"}).content == b"input-bytes"
        assert http.get("/view", params={"filename": "in.png"}).status_code == 404  # not in output/


@pytest.mark.parametrize("params, status", [
    ({}, 404),  # no filename
    ({"filename": "missing.png"}, 404),
    ({"filename": "../secret.txt"}, 400),
    ({"filename": "a/../../secret.txt"}, 400),
    ({"filename": "/etc/passwd"}, 400),
    ({"filename": "a.png", "type": "models"}, 400),  # not a folder /view serves
    ({"filename": "secret.txt", "subfolder": ".."}, 403),
    ({"filename": "secret.txt", "subfolder": "../.."}, 403),
    ({"filename": "passwd", "subfolder": "/etc"}, 403),
])
def test_view_refuses_paths_that_escape(server, params, status):
    (server.config.output_dir.parent / "secret.txt").write_text("not for you")
    with server.client() as http:
        answer = http.get("/view", params=params)
    assert answer.status_code == status
    assert b"not for you" not in answer.content


def test_view_refuses_a_symlinked_subfolder_that_leaves_the_folder(server, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "x.png").write_bytes(b"outside")
    os.symlink(outside, server.config.output_dir / "link")
    with server.client() as http:
        assert http.get("/view", params={"filename": "x.png", "subfolder": "link"}).status_code == 403


def test_view_preview_reencodes(server):
    (server.config.output_dir / "a.png").write_bytes(png_bytes(size=(20, 10)))
    with server.client() as http:
        jpeg = http.get("/view", params={"filename": "a.png", "preview": "jpeg;50"})
        webp = http.get("/view", params={"filename": "a.png", "preview": "webp;90"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(jpeg.content)) as img:
        assert (img.format, img.size) == ("JPEG", (20, 10))
    assert webp.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(webp.content)) as img:
        assert img.format == "WEBP"


def test_view_alpha_channel(server):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    (server.config.output_dir / "m.png").write_bytes(buffer.getvalue())
    with server.client() as http:
        alpha = http.get("/view", params={"filename": "m.png", "channel": "a"})
        rgb = http.get("/view", params={"filename": "m.png", "channel": "rgb"})
    with Image.open(io.BytesIO(alpha.content)) as img:
        assert img.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(img)[..., 3], rgba[..., 3])
    with Image.open(io.BytesIO(rgb.content)) as img:
        assert img.mode == "RGB"


def test_view_and_upload_unicode_names(server):
    data = png_bytes()
    with server.client() as http:
        assert upload(http, data, filename="ночь 夜.png").json()["name"] == "ночь 夜.png"
        answer = http.get("/view", params={"filename": "ночь 夜.png", "type": "input"})
    assert answer.status_code == 200 and answer.content == data
    assert "UTF-8''" in answer.headers["content-disposition"]


def test_view_sends_active_content_as_a_download(server):
    (server.config.output_dir / "page.html").write_text("<script>alert(1)</script>")
    with server.client() as http:
        answer = http.get("/view", params={"filename": "page.html"})
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["x-content-type-options"] == "nosniff"


# --- /upload/image ----------------------------------------------------------------------


def test_upload_stores_the_image_in_input(server):
    data = png_bytes()
    with server.client() as http:
        answer = upload(http, data)
        assert answer.status_code == 200
        assert answer.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
        assert (server.config.input_dir / "cat.png").read_bytes() == data
        # and it can be read back the way ComfyUI's frontend does
        assert http.get("/view", params={"filename": "cat.png", "type": "input"}).content == data


def test_upload_name_collisions_are_numbered(server):
    first, second, third = png_bytes((1, 2, 3)), png_bytes((4, 5, 6)), png_bytes((7, 8, 9))
    with server.client() as http:
        assert upload(http, first).json()["name"] == "cat.png"
        assert upload(http, second).json()["name"] == "cat (1).png"
        assert upload(http, third).json()["name"] == "cat (2).png"
        assert upload(http, second).json()["name"] == "cat (1).png"  # same bytes: the stored file is reused
    assert (server.config.input_dir / "cat (1).png").read_bytes() == second
    assert sorted(p.name for p in server.config.input_dir.iterdir()) == ["cat (1).png", "cat (2).png", "cat.png"]


def test_upload_overwrite(server):
    first, second = png_bytes((1, 2, 3)), png_bytes((4, 5, 6))
    with server.client() as http:
        upload(http, first)
        answer = upload(http, second, overwrite="true")
    assert answer.json()["name"] == "cat.png"
    assert (server.config.input_dir / "cat.png").read_bytes() == second


def test_upload_into_subfolder_and_type(server):
    data = png_bytes()
    with server.client() as http:
        answer = upload(http, data, subfolder="masks/set1", type="temp")
    assert answer.json() == {"name": "cat.png", "subfolder": "masks/set1", "type": "temp"}
    assert (server.config.temp_dir / "masks" / "set1" / "cat.png").read_bytes() == data


@pytest.mark.parametrize("filename, fields", [
    ("cat.png", {"subfolder": "../.."}),
    ("cat.png", {"subfolder": "/tmp"}),
    ("../../cat.png", {}),
    ("cat.png", {"type": "models"}),
])
def test_upload_refuses_paths_that_escape(server, filename, fields):
    with server.client() as http:
        answer = upload(http, png_bytes(), filename=filename, **fields)
    assert answer.status_code == 400
    assert not (server.config.input_dir.parent.parent / "cat.png").exists()
    assert not (server.config.input_dir.parent / "cat.png").exists()


def test_upload_refuses_what_is_not_an_image(server):
    with server.client() as http:
        text = upload(http, b"#!/bin/sh\necho hi\n", filename="x.png")
        truncated = upload(http, png_bytes()[:30], filename="y.png")
    assert text.status_code == 400 and "not an image" in text.json()["error"]
    assert truncated.status_code == 400
    assert list(server.config.input_dir.iterdir()) == []


def test_upload_needs_an_image_field(server):
    with server.client() as http:
        no_file = http.post("/upload/image", files={"picture": ("cat.png", png_bytes(), "image/png")})
        not_multipart = http.post("/upload/image", json={"image": "cat.png"})
        no_name = http.post("/upload/image", files={"image": ("", png_bytes(), "image/png")})
    assert no_file.status_code == 400
    assert not_multipart.status_code == 400
    assert no_name.status_code == 400


def test_upload_over_the_cap_is_413(start_server):
    srv = start_server(max_body_bytes=2000)
    big = png_bytes() + b"\0" * 3000
    with srv.client() as http:
        answer = upload(http, big)
    assert answer.status_code == 413
    assert list(srv.config.input_dir.iterdir()) == []
