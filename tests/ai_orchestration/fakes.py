"""Loopback fake LLM servers that speak the vendors' real wire formats.

`FakeOpenAI` answers `POST /v1/chat/completions` (JSON, or SSE `chat.completion.chunk`s
ending in `data: [DONE]`, with a usage chunk when `stream_options.include_usage` is
set); `FakeAnthropic` answers `POST /v1/messages` (JSON, or the SSE event sequence
message_start .. message_stop, with text_delta or input_json_delta blocks). Both bind
127.0.0.1 on a free port, record every request, and answer each request with the next
scripted behaviour:

    fake_openai.script(status(429, headers={"retry-after": "1"}), ok("hello"))

Behaviours: `ok(text | json=...)`, `status(code, headers=...)`, `hang(seconds)` (read
the request, never answer), `cut_after(n)` (send n content chunks, then drop the
connection, or end the body cleanly without the end marker with `clean=True`),
`stream_error(n)` (n chunks, then the vendor's in-stream error). When the script is
empty the server answers `ok()` with its default text.

Each request's exchange is timed on the server (`exchanges`): from the moment it was
read until the answer was sent or the client hung up (a hanging or pausing answer
watches for the client going away), so `peak_live(label)` says how many calls of one
kind (for OpenAI, the JSON schema's name, i.e. the phase) were ever live at once.
"""

import itertools
import json
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TEXT = "Hello from the fake model."
CHUNK_CHARS = 8


# --- behaviours --------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    kind: str  # ok, status, hang, cut, stream_error
    text: str | None = None
    json: Any = None
    chunks: tuple[str, ...] | None = None
    usage: tuple[int, int] | bool = True
    chunk_delay: float = 0.0
    finish_reason: str | None = None
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0
    n_chunks: int = 0
    clean: bool = False
    error_type: str = ""


def ok(
    text: str | None = None,
    *,
    json: Any = None,
    chunks: list[str] | None = None,
    usage: tuple[int, int] | bool = True,
    chunk_delay: float = 0.0,
    finish_reason: str | None = None,
) -> Behaviour:
    """A complete answer: `text`, or `json` (Anthropic: a tool_use block when a tool is
    forced). `usage=(input, output)` fixes the reported counts; `usage=False` omits them
    (OpenAI-compatible servers that ignore stream_options)."""
    return Behaviour(
        "ok",
        text=text,
        json=json,
        chunks=tuple(chunks) if chunks else None,
        usage=usage,
        chunk_delay=chunk_delay,
        finish_reason=finish_reason,
    )


def status(code: int, *, headers: dict | None = None, body: Any = None) -> Behaviour:
    """An HTTP error with the vendor's error body (or `body` verbatim)."""
    return Behaviour("status", status=code, headers=dict(headers or {}), body=body)


def hang(seconds: float = 30.0) -> Behaviour:
    """Read the request and answer nothing for `seconds` (released at shutdown)."""
    return Behaviour("hang", seconds=seconds)


def cut_after(
    n_chunks: int, text: str | None = None, *, clean: bool = False, json: Any = None
) -> Behaviour:
    """Stream `n_chunks` content chunks, then stop without the end marker: drop the TCP
    connection mid-body, or (`clean=True`) end the HTTP body properly."""
    return Behaviour("cut", text=text, json=json, n_chunks=n_chunks, clean=clean)


def stream_error(n_chunks: int, error_type: str = "overloaded_error") -> Behaviour:
    """Stream `n_chunks` chunks, then the vendor's in-stream error event."""
    return Behaviour("stream_error", n_chunks=n_chunks, error_type=error_type)


# --- recording ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    at: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Exchange:
    """One request as the server lived it: read at `started`, over at `ended`."""

    label: str | None
    started: float
    ended: float | None = None
    hung_up: bool = False  # the client went away before the answer was complete


class _Closed(Exception):
    """The client went away while we were writing."""


# --- the server --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes go out at once
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fake._dispatch(self)

    def do_GET(self) -> None:
        self.server.fake._dispatch(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: "FakeLLMServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on us by design (timeouts, cancellations); that is no error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class FakeLLMServer:
    """The transport shared by the vendor fakes: scripting, recording, SSE writing."""

    path = ""
    vendor = ""

    def __init__(self, *, default_text: str = DEFAULT_TEXT) -> None:
        self.default = ok(default_text)
        self.requests: list[RecordedRequest] = []
        self.exchanges: list[Exchange] = []
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._ids = itertools.count(1)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    # public API

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *behaviours: Behaviour) -> "FakeLLMServer":
        with self._lock:
            self._script.extend(behaviours)
        return self

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def peak_live(self, label: str | None = None) -> int:
        """The most exchanges (with `label`, if given) that were live at one moment."""
        with self._lock:
            spans = [
                (e.started, e.ended if e.ended is not None else float("inf"))
                for e in self.exchanges
                if label is None or e.label == label
            ]
        moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        live = peak = 0
        for _, step in moments:  # at a tie an end (-1) sorts first: touching is not overlapping
            live += step
            peak = max(peak, live)
        return peak

    def label(self, body: Any) -> str | None:
        """What kind of call a request is, for `peak_live` (vendor specific)."""
        return None

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # request handling

    def _next(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _dispatch(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=handler.command,
                    path=handler.path,
                    headers={k.lower(): v for k, v in handler.headers.items()},
                    json=body,
                    at=time.monotonic(),
                )
            )
        if handler.command != "POST" or handler.path.split("?")[0] != self.path:
            self._send_json(handler, 404, self.error_body(404, f"no route {handler.path}"))
            return
        exchange = Exchange(self.label(body), time.monotonic())
        with self._lock:
            self.exchanges.append(exchange)
        try:
            self._answer(handler, body)
        except (_Closed, OSError):
            exchange.hung_up = True
            handler.close_connection = True
        finally:
            exchange.ended = time.monotonic()

    def _answer(self, handler: _Handler, body: Any) -> None:
        behaviour = self._next()
        if behaviour.kind == "hang":
            if self._pause(handler, behaviour.seconds):
                raise _Closed
            handler.close_connection = True
            return
        if behaviour.kind == "status":
            body = (
                behaviour.body
                if behaviour.body is not None
                else self.error_body(behaviour.status, self.error_message(behaviour, body))
            )
            self._send_json(handler, behaviour.status, body, behaviour.headers)
            return
        request = body if isinstance(body, dict) else {}
        if request.get("stream"):
            self._stream(handler, request, behaviour)
        else:
            self._send_json(handler, 200, self.complete_body(request, behaviour))

    def _pause(self, handler: _Handler, seconds: float) -> bool:
        """Wait `seconds` (less if the server closes); True if the client hung up."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._released.is_set():
            readable, _, _ = select.select([handler.connection], [], [], 0.02)
            if readable:
                try:
                    if handler.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
        return False

    def _send_json(self, handler: _Handler, code: int, body: Any, headers: dict | None = None):
        data = json.dumps(body).encode() if not isinstance(body, bytes | str) else body
        if isinstance(data, str):
            data = data.encode()
        handler.send_response(code)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    def _stream(self, handler: _Handler, request: dict, behaviour: Behaviour) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for frame in self.sse_frames(request, behaviour):
            if frame is _CUT:
                if behaviour.clean:
                    # A complete HTTP body (the connection stays usable) with no end marker.
                    self._write(handler, b"0\r\n\r\n")
                else:
                    # Drop the connection mid-body: no terminating chunk, no end marker.
                    handler.wfile.flush()
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    handler.close_connection = True
                return
            data = frame.encode()
            self._write(handler, f"{len(data):x}\r\n".encode() + data + b"\r\n")
            if behaviour.chunk_delay and self._pause(handler, behaviour.chunk_delay):
                raise _Closed
        self._write(handler, b"0\r\n\r\n")

    @staticmethod
    def _write(handler: _Handler, data: bytes) -> None:
        try:
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError as exc:
            raise _Closed from exc

    # helpers for the vendor subclasses

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    @staticmethod
    def answer_text(behaviour: Behaviour) -> str:
        if behaviour.json is not None:
            return json.dumps(behaviour.json)
        return behaviour.text if behaviour.text is not None else DEFAULT_TEXT

    @staticmethod
    def pieces(behaviour: Behaviour, text: str) -> list[str]:
        if behaviour.chunks:
            return list(behaviour.chunks)
        return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]

    @staticmethod
    def error_message(behaviour: Behaviour, request_body: Any) -> str:
        return f"fake error {behaviour.status}"

    # vendor specifics

    def error_body(self, code: int, message: str) -> dict:
        raise NotImplementedError

    def complete_body(self, request: dict, behaviour: Behaviour) -> dict:
        raise NotImplementedError

    def sse_frames(self, request: dict, behaviour: Behaviour):
        raise NotImplementedError


_CUT = object()


def _prompt_tokens(messages: Any, system: Any = None) -> int:
    """A deterministic stand-in for the vendor's prompt token count."""
    text = json.dumps(messages) + json.dumps(system)
    return max(1, len(re.findall(r"\w+", text)))


# --- OpenAI ------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class FakeOpenAI(FakeLLMServer):
    """`POST /v1/chat/completions`, as OpenAI (and Ollama, llama.cpp, vLLM) speak it."""

    path = "/v1/chat/completions"
    vendor = "openai"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def label(self, body: Any) -> str | None:
        """The answer's JSON schema name: `<phase>_evidence` for the autopilot's calls."""
        response_format = (body or {}).get("response_format") or {}
        return (response_format.get("json_schema") or {}).get("name")

    def error_body(self, code: int, message: str) -> dict:
        kind, code_name = _OPENAI_ERRORS.get(code, ("server_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code_name}}

    def error_message(self, behaviour: Behaviour, request_body: Any) -> str:
        if behaviour.status == 401:
            # Like the real API, echo the key back: the adapter must not pass it on.
            key = (self.last.header("authorization") or "").removeprefix("Bearer ")
            return f"Incorrect API key provided: {key}. Find your API key in the dashboard."
        return super().error_message(behaviour, request_body)

    def _usage(self, request: dict, behaviour: Behaviour, n_chunks: int) -> dict:
        if isinstance(behaviour.usage, tuple):
            prompt, completion = behaviour.usage
        else:
            prompt, completion = _prompt_tokens(request.get("messages")), n_chunks
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def complete_body(self, request: dict, behaviour: Behaviour) -> dict:
        text = self.answer_text(behaviour)
        body = {
            "id": self.new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": behaviour.finish_reason or "stop",
                }
            ],
        }
        if behaviour.usage:
            body["usage"] = self._usage(request, behaviour, len(self.pieces(behaviour, text)))
        return body

    def sse_frames(self, request: dict, behaviour: Behaviour):
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": self.new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "system_fingerprint": "fp_fake",
        }
        with_usage = {"usage": None} if include_usage and behaviour.usage else {}

        def chunk(delta: dict, finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice], **with_usage})}\n\n"

        pieces = self.pieces(behaviour, self.answer_text(behaviour))
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for n, piece in enumerate(pieces):
            if behaviour.kind in ("cut", "stream_error") and n == behaviour.n_chunks:
                break
            yield chunk({"content": piece})
        if behaviour.kind == "cut":
            yield _CUT
            return
        if behaviour.kind == "stream_error":
            error = {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        yield chunk({}, behaviour.finish_reason or "stop")
        if with_usage:
            usage = self._usage(request, behaviour, len(pieces))
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


# --- Anthropic ---------------------------------------------------------------------------

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FakeAnthropic(FakeLLMServer):
    """`POST /v1/messages`, as the Anthropic Messages API speaks it."""

    path = "/v1/messages"
    vendor = "anthropic"

    @property
    def base_url(self) -> str:
        return self.url

    def error_body(self, code: int, message: str) -> dict:
        kind = _ANTHROPIC_ERRORS.get(code, "api_error" if code >= 500 else "invalid_request_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self.new_id("req_"),
        }

    def error_message(self, behaviour: Behaviour, request_body: Any) -> str:
        if behaviour.status == 401:
            return "invalid x-api-key"
        if behaviour.status == 529:
            return "Overloaded"
        return super().error_message(behaviour, request_body)

    @staticmethod
    def forced_tool(request: dict) -> str | None:
        choice = request.get("tool_choice") or {}
        return choice.get("name") if choice.get("type") == "tool" else None

    def _usage(self, request: dict, behaviour: Behaviour, n_chunks: int) -> tuple[int, int]:
        if isinstance(behaviour.usage, tuple):
            return behaviour.usage
        return _prompt_tokens(request.get("messages"), request.get("system")), n_chunks

    def _message(self, request: dict, content: list, stop_reason: Any, usage: dict) -> dict:
        return {
            "id": self.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "fake"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    def complete_body(self, request: dict, behaviour: Behaviour) -> dict:
        tool = self.forced_tool(request)
        pieces = self.pieces(behaviour, self.answer_text(behaviour))
        input_tokens, output_tokens = self._usage(request, behaviour, len(pieces))
        if tool and behaviour.json is not None:
            content = [
                {
                    "type": "tool_use",
                    "id": self.new_id("toolu_"),
                    "name": tool,
                    "input": behaviour.json,
                }
            ]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": self.answer_text(behaviour)}]
            stop = "end_turn"
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        return self._message(request, content, behaviour.finish_reason or stop, usage)

    def sse_frames(self, request: dict, behaviour: Behaviour):
        def event(name: str, data: dict) -> str:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n"

        tool = self.forced_tool(request)
        as_tool = tool is not None and behaviour.json is not None
        pieces = self.pieces(behaviour, self.answer_text(behaviour))
        input_tokens, output_tokens = self._usage(request, behaviour, len(pieces))
        start_usage = {
            "input_tokens": input_tokens,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        yield event(
            "message_start",
            {"type": "message_start", "message": self._message(request, [], None, start_usage)},
        )
        if as_tool:
            block = {"type": "tool_use", "id": self.new_id("toolu_"), "name": tool, "input": {}}
        else:
            block = {"type": "text", "text": ""}
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        yield event("ping", {"type": "ping"})
        if as_tool:
            # The real API opens a tool's input with an empty partial_json.
            yield event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": ""},
                },
            )
        for n, piece in enumerate(pieces):
            if behaviour.kind in ("cut", "stream_error") and n == behaviour.n_chunks:
                break
            delta = (
                {"type": "input_json_delta", "partial_json": piece}
                if as_tool
                else {"type": "text_delta", "text": piece}
            )
            yield event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        if behaviour.kind == "cut":
            yield _CUT
            return
        if behaviour.kind == "stream_error":
            yield event(
                "error",
                {"type": "error", "error": {"type": behaviour.error_type, "message": "Overloaded"}},
            )
            return
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop = behaviour.finish_reason or ("tool_use" if as_tool else "end_turn")
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        yield event("message_stop", {"type": "message_stop"})


# --- recorders for complete_with_retries' callbacks --------------------------------------


class DeltaRecorder:
    """An `on_delta` that keeps (attempt, chunk) pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def __call__(self, chunk: str, attempt: int) -> None:
        self.items.append((attempt, chunk))

    def text(self, attempt: int | None = None) -> str:
        return "".join(c for a, c in self.items if attempt is None or a == attempt)

    @property
    def attempts(self) -> list[int]:
        return sorted({a for a, _ in self.items})


class SleepRecorder:
    """A `sleep` that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
