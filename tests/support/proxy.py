"""A fault-injecting HTTP/1.1 proxy on loopback, between an SDK and a local test server.

    with FaultProxy(moto_port) as proxy:
        client = boto3.client("dynamodb", endpoint_url=proxy.endpoint, ...)
        proxy.add(Fault.drop_reply(amz_target("TransactWriteItems")))
        ...  # the first transaction is applied by moto, its reply never reaches the client
        assert proxy.fired == 1

It runs an asyncio server in a background thread and relays each client connection to
one upstream connection, request by request (keep-alive is kept on both sides). Each
request is read whole (its head, then a `Content-Length` body or a chunked one) and
matched against the faults in the order they were added; the first fault that matches
and still has uses left decides what happens to it:

- `DROP_REPLY`: forward it, read the upstream's whole answer, then reset the client's
  connection: the request was applied, the client never learns it (a lost reply).
- `DELAY_REPLY`: forward it, hold the answer `seconds` before relaying it (past the
  client's read timeout, the client gives up and usually retries).
- `RESET`: reset the client's connection without forwarding anything (not applied).
- `ANSWER`: answer with `response` (raw HTTP bytes, see `http_response`,
  `dynamodb_error`, `azure_error`) without forwarding: a throttle, a 503.

Faults are matched by a predicate on the parsed `Request` (see `amz_target`,
`method_path`, `header_contains`), skip their first `skip` matches and apply to the
next `times` ones (None: every one). botocore and azure-core send `Content-Length`
bodies for every request the stores and sinks make; chunked bodies (streamed uploads)
and `Expect: 100-continue` are handled too, so S3 and Blob clients also pass.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType

__all__ = [
    "Fault",
    "FaultKind",
    "FaultProxy",
    "Request",
    "Seen",
    "all_of",
    "amz_target",
    "azure_error",
    "body_contains",
    "cosmos_error",
    "dynamodb_error",
    "header_contains",
    "http_response",
    "method_path",
]

HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One HTTP request as the proxy read it from the client."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    body: bytes
    raw: bytes
    """The request exactly as it goes upstream (head and body)."""

    def header(self, name: str) -> str:
        """The header's value, or '' (`name` in any case)."""
        return self.headers.get(name.lower(), "")


Match = Callable[[Request], bool]


class FaultKind(enum.Enum):
    """What the proxy does to a request a fault matched."""

    DROP_REPLY = "drop-reply"
    DELAY_REPLY = "delay-reply"
    RESET = "reset"
    ANSWER = "answer"


@dataclass
class Fault:
    """A fault for the requests `match` accepts: after `skip` of them, the next `times`."""

    kind: FaultKind
    match: Match
    times: int | None = 1
    """How many matching requests it applies to (None: all of them)."""
    skip: int = 0
    """Matching requests let through untouched before it starts applying."""
    seconds: float = 0.0
    """How long `DELAY_REPLY` holds the answer."""
    response: bytes = b""
    """What `ANSWER` sends instead of forwarding."""
    matched: int = 0
    """Matching requests seen so far (skipped ones included)."""
    fired: int = 0
    """Requests it was applied to so far."""

    @classmethod
    def drop_reply(cls, match: Match, *, times: int | None = 1, skip: int = 0) -> Fault:
        """Forward the request, then lose its answer (reset the client's connection)."""
        return cls(FaultKind.DROP_REPLY, match, times, skip)

    @classmethod
    def delay_reply(
        cls, match: Match, seconds: float, *, times: int | None = 1, skip: int = 0
    ) -> Fault:
        """Forward the request, relay its answer `seconds` late."""
        return cls(FaultKind.DELAY_REPLY, match, times, skip, seconds=seconds)

    @classmethod
    def reset(cls, match: Match, *, times: int | None = 1, skip: int = 0) -> Fault:
        """Reset the client's connection without forwarding the request."""
        return cls(FaultKind.RESET, match, times, skip)

    @classmethod
    def answer(
        cls, match: Match, response: bytes, *, times: int | None = 1, skip: int = 0
    ) -> Fault:
        """Answer with `response` (raw HTTP) without forwarding the request."""
        return cls(FaultKind.ANSWER, match, times, skip, response=response)

    def _take(self, request: Request) -> bool:
        """Whether this fault applies to `request` (counting it when it matches)."""
        if self.times is not None and self.fired >= self.times:
            return False
        if not self.match(request):
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Seen:
    """A request the proxy handled, and the fault applied to it (None: relayed untouched)."""

    method: str
    path: str
    target: str
    """Its `X-Amz-Target` header, '' when none (handy for DynamoDB)."""
    fault: FaultKind | None
    size: int = 0
    """Its body's bytes."""


# -- predicates and canned answers -----------------------------------------------------------


def amz_target(operation: str) -> Match:
    """Requests whose `X-Amz-Target` names `operation` (`TransactWriteItems` or the full name)."""

    def match(request: Request) -> bool:
        target = request.header("x-amz-target")
        return target == operation or target.endswith("." + operation)

    return match


def method_path(method: str, path_prefix: str = "/") -> Match:
    """Requests of `method` whose path starts with `path_prefix`."""

    def match(request: Request) -> bool:
        return request.method == method.upper() and request.path.startswith(path_prefix)

    return match


def body_contains(text: str | bytes) -> Match:
    """Requests whose body contains `text` (a table name, an operation's field)."""
    needle = text.encode() if isinstance(text, str) else text

    def match(request: Request) -> bool:
        return needle in request.body

    return match


def all_of(*matches: Match) -> Match:
    """Requests every one of `matches` accepts."""

    def match(request: Request) -> bool:
        return all(m(request) for m in matches)

    return match


def header_contains(name: str, text: str) -> Match:
    """Requests whose header `name` contains `text`."""

    def match(request: Request) -> bool:
        return text in request.header(name)

    return match


def http_response(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, reason: str = ""
) -> bytes:
    """A complete HTTP/1.1 response with a `Content-Length`, as raw bytes."""
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
    for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def dynamodb_error(
    code: str = "ProvisionedThroughputExceededException",
    message: str = "The level of configured provisioned throughput for the table was exceeded.",
    status: int = 400,
    extra: dict[str, object] | None = None,
) -> bytes:
    """DynamoDB's JSON error answer (`extra`: more fields, e.g. `CancellationReasons`)."""
    body = json.dumps(
        {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message, **(extra or {})}
    ).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "fault-proxy"}
    return http_response(status, body, headers)


def azure_error(
    status: int = 503, code: str = "ServerBusy", message: str = "The server is busy."
) -> bytes:
    """An Azure Storage/Cosmos JSON error answer with its `x-ms-error-code` header."""
    body = json.dumps({"odata.error": {"code": code, "message": {"value": message}}}).encode()
    headers = {
        "Content-Type": "application/json;odata=minimalmetadata",
        "x-ms-error-code": code,
        "x-ms-request-id": "fault-proxy",
    }
    return http_response(status, body, headers)


def cosmos_error(
    status: int = 429,
    code: str = "TooManyRequests",
    message: str = "Request rate is large.",
    retry_after_ms: int = 10,
) -> bytes:
    """A Cosmos DB error answer (429 with `x-ms-retry-after-ms` by default: throttled)."""
    body = json.dumps({"code": code, "message": message}).encode()
    headers = {
        "Content-Type": "application/json",
        "x-ms-retry-after-ms": str(retry_after_ms),
        "x-ms-substatus": "3200" if status == 429 else "0",
        "x-ms-activity-id": "fault-proxy",
    }
    return http_response(status, body, headers)


_REASONS = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable"}


# -- the proxy --------------------------------------------------------------------------------


_Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Closed(Exception):
    """The peer closed its side between two messages."""


@dataclass
class FaultProxy:
    """An HTTP fault proxy on 127.0.0.1 in front of `target_port`; a context manager."""

    target_port: int
    target_host: str = "127.0.0.1"
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    """Every request handled, in order."""
    port: int = 0
    """The proxy's own port, once started."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: asyncio.Server | None = field(default=None, repr=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:<port>`, for an SDK's endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def fired(self) -> int:
        """Faults applied so far, all faults together."""
        with self._lock:
            return sum(f.fired for f in self.faults)

    def add(self, fault: Fault) -> Fault:
        """Arm `fault` (after the ones already armed); returns it, to read its counts later."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault and forget what was seen."""
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free loopback port, serving from a background thread."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0, limit=HEAD_LIMIT), loop
        ).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Close the server and every open connection; stop the thread."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- relaying -----------------------------------------------------------------------------

    def _fault_for(self, request: Request) -> Fault | None:
        with self._lock:
            chosen = next((f for f in self.faults if f._take(request)), None)
            target = request.header("x-amz-target")
            kind = chosen.kind if chosen else None
            seen = Seen(request.method, request.path, target, kind, len(request.body))
            self.seen.append(seen)
            return chosen

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: _Pair | None = None
        reused = False
        try:
            while True:
                try:
                    request = await _read_request(reader, writer)
                except _Closed:
                    return
                fault = self._fault_for(request)
                if fault is not None and fault.kind is FaultKind.RESET:
                    _reset(writer)
                    return
                if fault is not None and fault.kind is FaultKind.ANSWER:
                    writer.write(fault.response)
                    await writer.drain()
                    continue
                if upstream is None:
                    upstream, reused = await self._connect(), False
                try:
                    response, keep, framed = await _exchange(upstream, request)
                except _Closed:
                    if not reused:
                        raise
                    # The upstream closed an idle kept-alive connection: one fresh try.
                    self._drop(upstream)
                    upstream = await self._connect()
                    response, keep, framed = await _exchange(upstream, request)
                reused = keep
                if not keep:
                    self._drop(upstream)
                    upstream = None
                if fault is not None and fault.kind is FaultKind.DROP_REPLY:
                    _reset(writer)
                    return
                if fault is not None and fault.kind is FaultKind.DELAY_REPLY:
                    await asyncio.sleep(fault.seconds)
                writer.write(response)
                await writer.drain()
                if not framed:
                    return  # the body ended with the connection: so must the client's
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                self._drop(upstream)

    async def _connect(self) -> _Pair:
        pair = await asyncio.open_connection(self.target_host, self.target_port, limit=HEAD_LIMIT)
        self._writers.add(pair[1])
        return pair

    def _drop(self, pair: _Pair) -> None:
        self._writers.discard(pair[1])
        pair[1].transport.abort()


async def _exchange(upstream: _Pair, request: Request) -> tuple[bytes, bool, bool]:
    reader, writer = upstream
    writer.write(request.raw)
    await writer.drain()
    return await _read_response(reader, request.method)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_head(head: bytes) -> tuple[str, dict[str, str], list[str]]:
    """The start line, the headers (lower-case names) and the raw header lines."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers, [line for line in lines[1:] if line]


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from exc
        raise
    return head[:-4]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """A message body by `Content-Length`, or its chunked encoding as raw bytes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    parts.append(line)
                    if line == b"\r\n":
                        return b"".join(parts)
            parts.append(await reader.readexactly(size + 2))
    length = int(headers.get("content-length", "0") or "0")
    return await reader.readexactly(length) if length else b""


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    head = await _read_head(reader)
    start, headers, lines = _parse_head(head)
    method, path, _ = [*start.split(" ", 2), "", ""][:3]
    if headers.get("expect", "").lower() == "100-continue":
        # Answered here: the upstream gets the whole request at once, without the Expect.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        lines = [line for line in lines if not line.lower().startswith("expect:")]
        del headers["expect"]
        head = "\r\n".join([start, *lines]).encode("latin-1")
    body = await _read_body(reader, headers)
    return Request(method, path, headers, body, head + b"\r\n\r\n" + body)


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bool, bool]:
    """One whole response (interim 1xx ones too); whether the connection stays open, and
    whether the response is framed (False: its body ended with the connection)."""
    parts: list[bytes] = []
    while True:
        head = await _read_head(reader)
        start, headers, _ = _parse_head(head)
        status = int(start.split(" ", 2)[1])
        parts.append(head + b"\r\n\r\n")
        if 100 <= status < 200:
            continue
        keep = headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            return b"".join(parts), keep, True
        if "content-length" in headers or "chunked" in headers.get("transfer-encoding", ""):
            parts.append(await _read_body(reader, headers))
            return b"".join(parts), keep, True
        parts.append(await reader.read())  # delimited by the end of the connection
        return b"".join(parts), False, False
