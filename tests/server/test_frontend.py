"""ComfyUI's web UI at / and the routes about the UI's own content, on a real server
without a farm. The browser tests (tests/browser/) drive the UI itself."""
from __future__ import annotations

import pytest

from farm.errors import FarmError
from farm.server.routes.frontend import find_frontend

INSTALLED = find_frontend(None)
needs_package = pytest.mark.skipif(INSTALLED is None, reason="comfyui-frontend-package is not installed "
                                                             "(pip install 'renderfarm[ui]')")


@needs_package
def test_the_installed_frontend_is_served_at_the_root(server):
    with server.client() as http:
        index = http.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert index.text == (INSTALLED / "index.html").read_text()
        icons = http.get("/materialdesignicons.min.css")
        assert icons.status_code == 200 and icons.headers["content-type"].startswith("text/css")
        extensions = http.get("/api/extensions").json()
        assert extensions and all(e.startswith("/extensions/") and e.endswith(".js") for e in extensions)
        assert http.get(extensions[0]).status_code == 200
        # The mount takes only what no route took: the API and its errors are unchanged.
        assert "KSampler" in http.get("/object_info").json()
        missing = http.get("/api/no-such-route")
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
        assert http.get("/no-such-file.js").status_code == 404


def test_without_the_ui_the_root_says_how_to_install_it(start_server):
    srv = start_server(web_ui=False)
    with srv.client() as http:
        page = http.get("/")
        assert page.status_code == 200 and "pip install 'renderfarm[ui]'" in page.text
        assert 'href="farm"' in page.text  # the dashboard needs no package
        assert http.get("/api/extensions").json() == []
        assert http.get("/templates/index.json").status_code == 404


def test_a_configured_frontend_folder(start_server, tmp_path):
    root = tmp_path / "ui"
    (root / "extensions" / "mine").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>custom</title>")
    (root / "extensions" / "mine" / "a.js").write_text("export {}")
    srv = start_server(frontend_root=root)
    with srv.client() as http:
        assert "custom" in http.get("/").text
        assert http.get("/extensions").json() == ["/extensions/mine/a.js"]
        assert http.get("/extensions/mine/a.js").headers["cache-control"] == "no-cache"


def test_a_frontend_folder_without_index_html_is_refused(tmp_path):
    with pytest.raises(FarmError, match="no index.html"):
        find_frontend(tmp_path)


def test_content_routes_answer_as_comfyui_does_without_custom_nodes(start_server, tmp_path):
    root = tmp_path / "ui"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html>")
    srv = start_server(frontend_root=root)
    with srv.client() as http:
        for path, empty in (("/i18n", {}), ("/workflow_templates", {}), ("/global_subgraphs", {})):
            assert http.get(path).json() == empty, path
            assert http.get("/api" + path).json() == empty, path
        index = http.get("/templates/index.json")
        assert index.json() == [] and index.headers["content-type"] == "application/json"
        assert http.get("/templates/index_logo.json").json() == {}


def test_model_library_lists_folders_and_files(server):
    checkpoints = server.config.models_dir / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "sub").mkdir()
    (checkpoints / "sub" / "a.safetensors").write_bytes(b"x" * 10)
    with server.client() as http:
        folders = http.get("/api/experiment/models").json()
        assert {"name": "checkpoints", "folders": [str(checkpoints)]} in folders
        files = http.get("/api/experiment/models/checkpoints").json()
        assert [(f["name"], f["pathIndex"], f["size"]) for f in files] == [("sub/a.safetensors", 0, 10)]
        assert http.get("/api/experiment/models/loras").json() == []
        assert http.get("/api/experiment/models/nope").status_code == 404
        # ComfyUI's internal route (not under /api): every model folder and its paths on disk
        paths = http.get("/internal/folder_paths").json()
        assert paths["checkpoints"] == [str(checkpoints)] and paths["loras"] == [str(server.config.models_dir / "loras")]
