"""push.py uploads every committed dashboard with the token, into its folder, overwriting.

Grafana itself does not run here, so a loopback HTTP server stands in for the three
endpoints push.py calls (the folder lookup, folder creation, dashboard upload) and records
what arrived."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from dashboards import panels, push


class FakeGrafana(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, str | None, dict | None]]] = []

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _record(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers["Authorization"], body))
        return body

    def do_GET(self) -> None:
        self._record()
        self._answer(404, {"message": "folder not found"})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/api/folders":
            self._answer(200, {"uid": body["uid"], "title": body["title"]})
        else:
            self._answer(200, {"status": "success", "uid": body["dashboard"]["uid"]})

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


def test_push_uploads_every_dashboard_with_the_token():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert push.main(["--url", url, "--token", "glsa_test_token"]) == 0
    finally:
        server.shutdown()
    calls = FakeGrafana.requests
    assert {auth for _, _, auth, _ in calls} == {"Bearer glsa_test_token"}
    assert calls[0][:2] == ("GET", f"/api/folders/{push.FOLDER_UID}")
    assert calls[1][:2] == ("POST", "/api/folders") and calls[1][3]["uid"] == push.FOLDER_UID
    uploads = [body for method, path, _, body in calls if path == "/api/dashboards/db"]
    assert sorted(u["dashboard"]["uid"] for u in uploads) == sorted(
        d.uid for d in panels.DASHBOARDS
    )
    assert all(u["overwrite"] and u["folderUid"] == push.FOLDER_UID for u in uploads)
    assert all(u["dashboard"]["panels"] for u in uploads)


def test_push_to_an_unreachable_grafana_is_one_line_naming_the_url_and_the_fix(capsys, monkeypatch):
    """Before: the HTTP client's traceback (three nested exceptions)."""
    monkeypatch.delenv("SERVE_APP_DEBUG", raising=False)  # no traceback before the line
    with socket.socket() as closed:  # a real loopback port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert push.main(["--url", url, "--token", "glsa_test_token"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"dashboards.push: cannot reach Grafana at {url} (Connection refused): check --url "
        "(scheme, host and port of Grafana's web address) and that Grafana is up"
    )
