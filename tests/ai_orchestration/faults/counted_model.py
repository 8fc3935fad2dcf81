"""A counted model for fault tests: a loopback OpenAI-compatible server that the worker
processes call through the real `local` provider (LOCAL_LLM_BASE_URL), which answers
each phase with valid evidence, streamed slowly, and records every call.

- **Evidence.** The phase comes from the request's JSON schema name (`discovery_evidence`
  …), the work item from the item's instruction ("work item W1: …", its files), the
  workflow from a marker in its requirements (`fm-xxxxxxxx`, every system prompt carries
  them). The answer is the offline provider's evidence for those facts, so the same
  workflow runs as it does offline.
- **Counting.** Each call gets a serial number, which the server reports as the call's
  `prompt_tokens` (its `completion_tokens` are its content chunks), so the usage a worker
  books names exactly the calls it booked. A call is *answered* when the whole stream,
  through `[DONE]`, was written; *cut* when the client went away before that (killed, or
  it cancelled the call). The server counts the calls live at once per phase attempt
  (workflow, phase, work item), and the peak.
- **Holding.** `hold(...)` stops the next matching call after a few chunks until the
  test releases it (or its client goes away), so a fault lands mid-call by construction.
  `client_pid(call, pids)` says which of the given processes made a call (Linux /proc).
"""

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ai_orchestration.providers.base import ChatRequest
from ai_orchestration.providers.offline import OfflineProvider

MARKER = re.compile(r"\bfm-[0-9a-f]{8}\b")
ITEM = re.compile(r"work item (?P<key>[^:\s]+): (?P<title>[^\n]*?)\.?\n")
ITEM_FILES = re.compile(r"Write exactly these files and no others: (?P<files>.+?)\. Give each")
PATH = "/v1/chat/completions"


@dataclass
class Call:
    """One model call as the server lived it."""

    serial: int
    workflow: str  # the workflow's marker
    phase: str
    item: str  # the work item's key; "" for a phase's call
    client_port: int
    started: float  # time.monotonic()
    started_at: float  # time.time()
    ended: float | None = None
    ended_at: float | None = None  # time.time()
    outcome: str = "streaming"  # then "answered" or "cut"
    output_tokens: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """The phase attempt the call is for."""
        return (self.workflow, self.phase, self.item)

    @property
    def input_tokens(self) -> int:
        return self.serial


@dataclass
class Hold:
    """Holds the first call that matches, after `after_chunks` chunks, until released."""

    phase: str | None = None
    workflow: str | None = None
    item: bool | None = None  # True: only a work item's call; False: only a phase's
    after_chunks: int = 2
    limit: float = 30.0  # released by itself after this many seconds
    call: Call | None = None
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, call: Call) -> bool:
        return (
            (self.phase is None or call.phase == self.phase)
            and (self.workflow is None or call.workflow == self.workflow)
            and (self.item is None or bool(call.item) == self.item)
        )

    def wait_held(self, timeout: float) -> Call:
        if not self.held.wait(timeout):
            raise AssertionError(f"no call matching {self} came within {timeout:g} s")
        assert self.call is not None
        return self.call

    def release(self) -> None:
        self.released.set()


class _ClientGone(Exception):
    """The client closed the connection while the answer was being sent."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.model.answer(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    model: "CountedModel"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on us by design (killed workers, cancelled calls)


class CountedModel:
    """The server; `base_url` is what LOCAL_LLM_BASE_URL should be."""

    def __init__(self, *, chunk_chars: int = 48, chunk_delay: float = 0.004) -> None:
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._requirements: dict[str, dict] = {}
        self._live: dict[tuple, int] = {}
        self._peak: dict[tuple, int] = {}
        self._holds: list[Hold] = []  # waiting for a call
        self._made: list[Hold] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.model = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    # --- the test's side ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def requirements_for(self, marker: str, description: str) -> dict:
        """Requirements whose workflow the server will know by `marker`."""
        assert MARKER.fullmatch(marker) and marker in description
        requirements = {"description": description}
        with self._lock:
            self._requirements[marker] = requirements
        return requirements

    def hold(self, **match: Any) -> Hold:
        """Hold the next call matching `match` (see Hold) mid-stream."""
        hold = Hold(**match)
        with self._lock:
            self._holds.append(hold)
            self._made.append(hold)
        return hold

    def release_holds(self) -> None:
        """Let every held call go on, and forget the holds no call matched."""
        with self._lock:
            made, self._holds = list(self._made), []
        for hold in made:
            hold.release()

    def peak_live(self) -> dict[tuple, int]:
        """The most calls live at one moment, per phase attempt."""
        with self._lock:
            return dict(self._peak)

    def live(self) -> int:
        with self._lock:
            return sum(self._live.values())

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        self._closing.set()
        self.release_holds()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "CountedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- answering ---------------------------------------------------------------------

    def answer(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        try:
            request = json.loads(handler.rfile.read(length) or b"{}")
        except ValueError:
            request = {}
        if handler.path.split("?")[0] != PATH or not isinstance(request, dict):
            self._error(handler, 404, f"no route {handler.path}")
            return
        facts = self._facts(request)
        if isinstance(facts, str):
            self._error(handler, 400, facts)
            return
        call, hold = self._begin(facts, handler.client_address[1])
        try:
            self._stream(handler, request, call, hold, self._evidence_text(facts))
            call.outcome = "answered"
        except (_ClientGone, OSError):
            call.outcome = "cut"
            handler.close_connection = True
        finally:
            self._end(call)

    def _facts(self, request: dict) -> dict | str:
        """What the call is for, from what the vendor sees; a message when unknown."""
        schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("name")
        messages = [m.get("content") or "" for m in request.get("messages") or []]
        marker = MARKER.search("\n".join(messages))
        if not schema or not schema.endswith("_evidence") or marker is None:
            return f"not a fault-test call (schema {schema!r}, marker {bool(marker)})"
        with self._lock:
            requirements = self._requirements.get(marker.group())
        if requirements is None:
            return f"unknown workflow marker {marker.group()}"
        facts = {
            "phase": schema.removesuffix("_evidence").upper(),
            "requirements": requirements,
            "marker": marker.group(),
            "work_item": None,
        }
        item, files = ITEM.search(messages[-1]), ITEM_FILES.search(messages[-1])
        if item is not None and files is not None:
            facts["work_item"] = {
                "key": item["key"],
                "title": item["title"],
                "files": [f.strip() for f in files["files"].split(",")],
            }
        return facts

    @staticmethod
    def _evidence_text(facts: dict) -> str:
        """The offline provider's evidence for the same facts (its public interface)."""
        request = ChatRequest(
            model="counted",
            messages=(),
            metadata={
                "phase": facts["phase"],
                "requirements": facts["requirements"],
                "work_item": facts["work_item"],
                "feedback": "",
            },
        )
        completion = OfflineProvider().stream(
            request, on_delta=lambda chunk: None, should_cancel=lambda: False, timeout=10
        )
        return completion.content

    def _begin(self, facts: dict, client_port: int) -> tuple[Call, Hold | None]:
        with self._lock:
            call = Call(
                serial=len(self.calls) + 1,
                workflow=facts["marker"],
                phase=facts["phase"],
                item=(facts["work_item"] or {}).get("key", ""),
                client_port=client_port,
                started=time.monotonic(),
                started_at=time.time(),
            )
            self.calls.append(call)
            self._live[call.key] = self._live.get(call.key, 0) + 1
            self._peak[call.key] = max(self._peak.get(call.key, 0), self._live[call.key])
            hold = next((h for h in self._holds if h.matches(call)), None)
            if hold is not None:
                self._holds.remove(hold)
                hold.call = call
        return call, hold

    def _end(self, call: Call) -> None:
        with self._lock:
            call.ended, call.ended_at = time.monotonic(), time.time()
            self._live[call.key] -= 1

    def _stream(
        self, handler: _Handler, request: dict, call: Call, hold: Hold | None, text: str
    ) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        base = {
            "id": f"chatcmpl-{call.serial:06d}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "counted"),
        }

        def chunk(delta: dict, finish: str | None = None) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        pieces = [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
        self._event(handler, chunk({"role": "assistant", "content": ""}))
        for n, piece in enumerate(pieces, start=1):
            self._event(handler, chunk({"content": piece}))
            call.output_tokens = n
            if hold is not None and n == hold.after_chunks:
                hold.held.set()
                self._pause(handler, hold.limit, hold.released)
            elif self.chunk_delay:
                self._pause(handler, self.chunk_delay)
        self._event(handler, chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": call.input_tokens,
                "completion_tokens": call.output_tokens,
                "total_tokens": call.input_tokens + call.output_tokens,
            }
            self._event(handler, {**base, "choices": [], "usage": usage})
        self._write(handler, b"data: [DONE]\n\n")
        self._write_raw(handler, b"0\r\n\r\n")

    def _event(self, handler: _Handler, data: dict) -> None:
        self._write(handler, f"data: {json.dumps(data)}\n\n".encode())

    def _write(self, handler: _Handler, data: bytes) -> None:
        self._write_raw(handler, f"{len(data):x}\r\n".encode() + data + b"\r\n")

    @staticmethod
    def _write_raw(handler: _Handler, data: bytes) -> None:
        try:
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _pause(self, handler: _Handler, seconds: float, until: threading.Event | None = None):
        """Wait `seconds` (or until `until` is set, or the server closes), watching for
        the client going away (then _ClientGone)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._closing.is_set():
            if until is not None and until.is_set():
                return
            wait = min(0.02, max(0.0, deadline - time.monotonic()))
            readable, _, _ = select.select([handler.connection], [], [], wait)
            if readable:
                try:
                    if handler.connection.recv(1, socket.MSG_PEEK) == b"":
                        raise _ClientGone
                except OSError as exc:
                    raise _ClientGone from exc

    def _error(self, handler: _Handler, code: int, message: str) -> None:
        self.errors.append(message)
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        ).encode()
        handler.send_response(code)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# --- which process made a call -----------------------------------------------------------


def client_pid(call: Call, server_port: int, pids: Iterable[int]) -> int | None:
    """The process among `pids` that holds the client end of `call`'s connection, found
    through /proc (the socket's inode in /proc/net/tcp, then the processes' fds)."""
    inode = _socket_inode(call.client_port, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if fd.readlink().as_posix() == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                return inode
    return None
