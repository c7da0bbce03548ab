"""A real HTTP server on loopback that answers each POST with the next scripted reply.

Replies are JSON errors or bodies with any status and headers, or SSE streams that end
properly, carry an in-band error, or are cut (the connection closes mid-stream). Every
request's headers and body are recorded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering


@dataclass
class SseReply:
    events: list[dict]  # sent as `data: <json>` lines
    done: bool = True  # send `data: [DONE]` at the end
    chunked: bool = False  # chunked transfer encoding: a cut is then a protocol error


def completion_chunk(text: str, finish_reason: str | None = None, index: int = 0) -> dict:
    return {
        "object": "text_completion",
        "choices": [{"index": index, "text": text, "finish_reason": finish_reason}],
    }


def error_reply(status: int, message: str, retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, {"error": {"message": message, "type": "x", "param": None}}, headers)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (the deadline tests) breaks the pipe: expected here


class ScriptedHttpServer:
    def __init__(self, *replies: Reply | SseReply) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[dict[str, str], dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append((dict(self.headers), body))
                reply = server.replies.pop(0) if server.replies else Reply(500, {"error": {}})
                if isinstance(reply, SseReply):
                    return self._stream(reply)
                time.sleep(reply.delay_s)
                data = json.dumps(reply.body or {}).encode()
                self.send_response(reply.status)
                for name, value in {**reply.headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, reply: SseReply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                lines = [f"data: {json.dumps(event)}\n\n" for event in reply.events]
                lines += ["data: [DONE]\n\n"] if reply.done else []
                for line in lines:
                    data = line.encode()
                    if reply.chunked:
                        data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
                    self.wfile.write(data)
                    self.wfile.flush()
                if reply.chunked and reply.done:
                    self.wfile.write(b"0\r\n\r\n")  # the proper end; a cut leaves it out
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def idempotency_keys(self) -> list[str | None]:
        return [headers.get("Idempotency-Key") for headers, _ in self.requests]

    def __enter__(self) -> ScriptedHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
