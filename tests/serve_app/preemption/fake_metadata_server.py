"""A fake cloud metadata server on loopback: AWS IMDSv2 spot notices and GCP `preempted`.

It enforces what the real services do (an IMDSv2 session token from PUT, the
`Metadata-Flavor: Google` header) and records every request, so tests can assert on the
token flow. Tests flip `aws_notice` / `gcp_preempted` while it runs.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serve_app.preemption import notices


@dataclass
class MetadataState:
    aws_notice: dict | str | None = None  # spot/instance-action's JSON (str: raw); None: 404
    gcp_preempted: bool = False
    valid_tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))


class FakeMetadataServer:
    def __init__(self) -> None:
        self.state = MetadataState()
        token_numbers = itertools.count(1)
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self._record()
                ttl = self.headers.get(notices.AWS_TOKEN_TTL_HEADER)
                if self.path != notices.AWS_TOKEN_PATH or not ttl:
                    return self._reply(400, "bad token request")
                token = f"token-{next(token_numbers)}"
                state.valid_tokens.add(token)
                self._reply(200, token)

            def do_GET(self) -> None:
                self._record()
                if self.path == notices.AWS_NOTICE_PATH:
                    if self.headers.get(notices.AWS_TOKEN_HEADER) not in state.valid_tokens:
                        return self._reply(401, "")
                    if state.aws_notice is None:
                        return self._reply(404, "Not Found")
                    notice = state.aws_notice
                    return self._reply(
                        200, notice if isinstance(notice, str) else json.dumps(notice)
                    )
                if self.path == notices.GCP_NOTICE_PATH:
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._reply(403, "Missing Metadata-Flavor:Google header.")
                    return self._reply(200, "TRUE" if state.gcp_preempted else "FALSE")
                self._reply(404, "Not Found")

            def _record(self) -> None:
                state.requests.append((self.command, self.path, dict(self.headers)))

            def _reply(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeMetadataServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
