"""A Lambda Runtime API on loopback: what the Lambda service serves a function's runtime.

The runtime interface client (`awslambdaric`) long-polls `GET .../invocation/next`, runs
the handler and posts the answer to `.../response` or `.../error`, over HTTP/1.1, reading
the request id, deadline, trace id and function ARN from the headers Lambda sends.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:orders-processor"


@dataclass
class Answer:
    """What the runtime posted for one invocation."""

    request_id: str
    ok: bool
    body: Any
    error_type: str | None = None


class RuntimeAPI:
    """Queues invocations for the runtime and collects its answers."""

    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.answers: dict[str, queue.Queue[Answer]] = {}
        self.init_errors: list[Any] = []
        self.trace_ids: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True

    @property
    def address(self) -> str:
        """host:port, the value of AWS_LAMBDA_RUNTIME_API."""
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def invoke(self, event: Any, timeout: float = 60.0) -> Answer:
        """Hand `event` to the runtime and wait for its answer."""
        request_id = str(uuid.uuid4())
        self.answers[request_id] = queue.Queue()
        self.pending.put((request_id, json.dumps(event).encode()))
        try:
            return self.answers[request_id].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the runtime did not answer within {timeout}s; init errors: {self.init_errors}"
            ) from None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(
                self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(404)
                    return
                request_id, body = api.pending.get()
                root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
                trace = f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=1"
                api.trace_ids[request_id] = trace
                self._reply(
                    200,
                    body,
                    {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
                        "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                        "Lambda-Runtime-Trace-Id": trace,
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_errors.append(body)
                    self._reply(202, b"{}")
                    return
                if (
                    len(parts) == 3
                    and parts[0] == "invocation"
                    and parts[2] in {"response", "error"}
                ):
                    request_id = parts[1]
                    ok = parts[2] == "response"
                    error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                    api.answers[request_id].put(Answer(request_id, ok, body, error_type))
                    self._reply(202, b"{}")
                    return
                self._reply(404)

        return Handler


@contextmanager
def runtime_api() -> Iterator[RuntimeAPI]:
    """A Runtime API serving on a free loopback port until the block ends."""
    api = RuntimeAPI()
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
