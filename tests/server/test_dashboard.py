"""GET /farm and its script are served from the package (no build step, no extra);
the browser test (test_browser.py) checks what the page shows."""
from __future__ import annotations


def test_dashboard_page_and_script_are_served(server):
    with server.client() as http:
        page = http.get("/farm")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="farm/dashboard.js">' in page.text
        script = http.get("/farm/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["cache-control"] == "no-cache"
        # What the script polls exists on this server (503 here: no farm is attached).
        for route in ('getJSON("workers")', 'getJSON("queue")', '"history?max_items="'):
            assert route in script.text
        assert http.get("/workers").status_code == 503


def test_dashboard_needs_the_token_like_every_route(start_server):
    srv = start_server(token="t0k")
    with srv.client() as http:
        assert http.get("/farm").status_code == 401
        assert http.get("/farm", params={"token": "t0k"}).status_code == 200
        assert http.get("/farm/dashboard.js").status_code == 200  # the cookie set just now
