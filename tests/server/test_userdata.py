"""The web UI's storage routes (/users, /settings, /userdata, /v2/userdata) on a real server,
backed by real files under the farm's user folder, with ComfyUI's shapes and status codes."""
from __future__ import annotations

import json

import pytest


@pytest.fixture
def http(server):
    with server.client() as client:
        yield client


def test_users_is_single_user_on_server_storage(server, http):
    assert http.get("/api/users").json() == {"storage": "server", "migrated": False}
    assert http.post("/api/settings/Comfy.Locale", json="en").status_code == 200
    assert http.get("/users").json() == {"storage": "server", "migrated": True}
    refused = http.post("/api/users", json={"username": "bob"})
    assert refused.status_code == 400 and "single-user" in refused.json()["error"]


def test_settings_round_trip_through_the_file(server, http):
    assert http.get("/api/settings").json() == {}
    assert http.get("/api/settings/Comfy.Locale").json() is None
    assert http.post("/api/settings", json={"Comfy.Locale": "fr", "Comfy.Sidebar.Size": 300}).status_code == 200
    assert http.post("/api/settings/Comfy.Locale", json="en").status_code == 200
    assert http.post("/api/settings/Comfy.Keybinds", json=[{"key": "r"}]).status_code == 200
    expected = {"Comfy.Locale": "en", "Comfy.Sidebar.Size": 300, "Comfy.Keybinds": [{"key": "r"}]}
    assert http.get("/api/settings").json() == expected
    assert http.get("/settings/Comfy.Sidebar.Size").json() == 300
    on_disk = server.config.user_folder() / "default" / "comfy.settings.json"
    assert json.loads(on_disk.read_text()) == expected


def test_settings_refuse_a_non_object_and_bad_json(http):
    refused = http.post("/api/settings", json=[1, 2])
    assert refused.status_code == 400 and "JSON object" in refused.json()["error"]
    bad = http.post("/api/settings/x", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]


def test_a_corrupt_settings_file_is_named_in_the_error(server, http):
    path = server.config.user_folder() / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1")
    answer = http.get("/api/settings")
    assert answer.status_code == 500 and str(path) in answer.json()["error"]


def test_save_list_load_move_delete_a_workflow(server, http):
    workflow = {"nodes": [], "links": [], "version": 0.4}
    body = json.dumps(workflow).encode()
    saved = http.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=true&full_info=true", content=body)
    assert saved.status_code == 200
    info = saved.json()
    assert info["path"] == "workflows/my flow.json" and info["size"] == len(body)
    assert isinstance(info["modified"], int) and info["modified"] > 1_000_000_000_000  # milliseconds
    assert (server.config.user_folder() / "default" / "workflows" / "my flow.json").read_bytes() == body

    again = http.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=false", content=b"{}")
    assert again.status_code == 409

    listing = http.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert [f["path"] for f in listing] == ["my flow.json"]
    assert http.get("/api/userdata?dir=workflows").json() == ["my flow.json"]
    assert http.get("/api/userdata?dir=workflows&split=true").json() == [["my flow.json", "my flow.json"]]

    loaded = http.get("/api/userdata/workflows%2Fmy%20flow.json")
    assert loaded.status_code == 200 and loaded.json() == workflow
    assert loaded.headers["content-disposition"].startswith("attachment")
    assert loaded.headers["x-content-type-options"] == "nosniff"

    moved = http.post("/api/userdata/workflows%2Fmy%20flow.json/move/workflows%2Fsub%2Frenamed.json")
    assert moved.status_code == 200 and moved.json() == "workflows/sub/renamed.json"
    assert http.get("/api/userdata/workflows%2Fmy%20flow.json").status_code == 404
    assert http.get("/api/userdata?dir=workflows&recurse=true").json() == ["sub/renamed.json"]
    assert http.get("/api/userdata?dir=workflows").json() == []  # not recursive: only the folder's own files

    assert http.delete("/api/userdata/workflows%2Fsub%2Frenamed.json").status_code == 204
    assert http.delete("/api/userdata/workflows%2Fsub%2Frenamed.json").status_code == 404


def test_a_folder_named_move_is_not_a_move(http):
    assert http.post("/api/userdata/move%2Fmove%2Fa.json", content=b"1").json() == "move/move/a.json"
    assert http.get("/api/userdata/move%2Fmove%2Fa.json").json() == 1


def test_v2_listing_has_folders_first_then_files(http):
    for name in ("workflows%2Fb.json", "workflows%2Fa.json", "workflows%2Fdeep%2Fc.json", "top.txt"):
        assert http.post(f"/api/userdata/{name}", content=b"{}").status_code == 200
    entries = http.get("/api/v2/userdata?path=workflows").json()
    assert [(e["name"], e["type"]) for e in entries] == [("deep", "directory"), ("a.json", "file"),
                                                          ("b.json", "file"), ("c.json", "file")]
    assert {e["path"] for e in entries} == {"workflows/deep", "workflows/a.json", "workflows/b.json",
                                            "workflows/deep/c.json"}
    assert entries[1]["size"] == 2 and isinstance(entries[1]["modified"], float)
    assert http.get("/api/v2/userdata?path=nope").status_code == 404
    assert http.get("/api/v2/userdata?path=top.txt").status_code == 400


def test_v2_listing_of_a_new_user_is_empty(http):
    assert http.get("/api/v2/userdata").json() == []


def test_missing_folder_and_missing_dir_parameter(http):
    assert http.get("/api/userdata?dir=workflows").status_code == 404  # the UI reads 404 as "none yet"
    missing = http.get("/api/userdata")
    assert missing.status_code == 400 and "dir=" in missing.json()["error"]


@pytest.mark.parametrize("path", ["..%2F..%2Fescape.json", "%2Fetc%2Fpasswd", "workflows%2F..%2F..%2Fx"])
def test_paths_outside_the_user_folder_are_refused(server, http, path):
    assert http.post(f"/api/userdata/{path}", content=b"x").status_code == 403
    assert http.get(f"/api/userdata/{path}").status_code == 403
    assert http.get(f"/api/userdata?dir={path}").status_code == 403
    assert not (server.config.user_folder().parent / "escape.json").exists()


def test_user_css_is_served_inline_and_scripts_never_are(http):
    assert http.get("/api/userdata/user.css").status_code == 404  # the UI links it on every load
    http.post("/api/userdata/user.css", content=b"body{color:red}")
    css = http.get("/api/userdata/user.css")
    assert css.headers["content-type"].startswith("text/css") and "content-disposition" not in css.headers
    http.post("/api/userdata/evil.html", content=b"<script>alert(1)</script>")
    page = http.get("/api/userdata/evil.html")
    assert page.headers["content-type"] == "application/octet-stream"
    assert page.headers["content-disposition"].startswith("attachment")
