"""The ASGI application topdog/asgi.py mounts at /mcp: checks, then the SDK's transport.

Before the MCP SDK sees a request: the Host must be one of ALLOWED_HOSTS (Django's rule;
400 otherwise), and `Authorization: Token <token>` or `Bearer <token>` must name an
active user's API token (`workflows.selectors.api_token_find`; 401 JSON otherwise, with
the REST API's texts). Failures count against the client's address in the REST API's
failed-authentication throttle, so an address over its rate is 429 here as there. The
user goes into the scope as `user`, where the tools read it.

The SDK's Streamable HTTP session manager serves the request, stateless and with JSON
responses: every POST is answered on its own, so any server process can answer any
request and no session outlives one. The manager's `run()` must be entered before it
handles a request; it is meant for an ASGI lifespan, which daphne does not send. So the
first request on an event loop starts a task that enters `run()` and holds it for the
loop's life; requests wait until it is in. A request on another loop (tests run one per
test) starts a new manager there, since a manager runs once.

Each request runs in its own `ThreadSensitiveContext`, as Django runs a request, so the
tools' database calls get a thread of their own instead of queueing behind every other
async caller's on the one shared thread.
"""

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http.request import split_domain_port, validate_host
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from rest_framework.request import Request

from ai_orchestration.mcp.server import mcp_server_build
from workflows.api.throttling import auth_failure_throttle
from workflows.authentication import TooManyFailures
from workflows.selectors import api_token_find

NO_CREDENTIALS = "Authentication credentials were not provided."
BAD_TOKEN = "invalid or revoked token; create one with `manage.py topdog token create`"
DEACTIVATED = "this user is deactivated"


@dataclass
class _Running:
    loop: asyncio.AbstractEventLoop
    manager: StreamableHTTPSessionManager
    ready: asyncio.Event
    task: asyncio.Task


class McpApplication:
    """ASGI app: Host and token checks, then the MCP server's session manager."""

    def __init__(self, build: Callable[[], MCPServer] = mcp_server_build) -> None:
        self._build = build
        self._running: _Running | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async with ThreadSensitiveContext():
            await self._serve(scope, receive, send)

    async def _serve(self, scope: dict, receive: Any, send: Any) -> None:
        if not _host_allowed(scope):
            return await _json(send, 400, {"detail": "invalid Host header"})
        user, refusal = await database_sync_to_async(_authenticate)(scope)
        if refusal is not None:
            return await _json(send, *refusal)
        manager = await self._manager()
        await manager.handle_request({**scope, "user": user}, receive, send)

    async def _manager(self) -> StreamableHTTPSessionManager:
        loop = asyncio.get_running_loop()
        running = self._running
        if running is None or running.loop is not loop:
            running = self._running = self._start(loop)
        await running.ready.wait()
        return running.manager

    def _start(self, loop: asyncio.AbstractEventLoop) -> _Running:
        server = self._build()
        server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            max_request_body_size=settings.TOPDOG_MAX_BODY_BYTES,
            # The Host is checked above against ALLOWED_HOSTS, as Django checks it.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        manager, ready = server.session_manager, asyncio.Event()
        task = loop.create_task(_hold(manager, ready), name="mcp-session-manager")
        return _Running(loop=loop, manager=manager, ready=ready, task=task)


async def _hold(manager: StreamableHTTPSessionManager, ready: asyncio.Event) -> None:
    """Enter the manager's `run()` and stay in it until the loop ends."""
    try:
        async with manager.run():
            ready.set()
            await asyncio.Event().wait()
    finally:
        ready.set()  # a failed start: requests then get the manager's own error


def _authenticate(scope: dict) -> tuple[Any, tuple | None]:
    """(the token's user, None), or (None, (status, body, retry after)) to refuse with."""
    request = Request(ASGIRequest(scope, io.BytesIO()))
    throttle = auth_failure_throttle()
    wait = throttle.blocked(request)
    if wait is not None:
        detail = f"{TooManyFailures.default_detail}; retry in {wait:.0f} seconds"
        return None, (429, {"detail": detail}, wait)
    raw = _token_from(scope)
    token = api_token_find(raw=raw) if raw is not None else None
    if token is not None and token.user.is_active:
        return token.user, None
    throttle.record(request)
    detail = NO_CREDENTIALS if raw is None else BAD_TOKEN if token is None else DEACTIVATED
    return None, (401, {"detail": detail}, None)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def _token_from(scope: dict) -> str | None:
    parts = (_header(scope, b"authorization") or "").split()
    if len(parts) == 2 and parts[0].lower() in ("token", "bearer"):
        return parts[1]
    return None


def _host_allowed(scope: dict) -> bool:
    domain, _ = split_domain_port(_header(scope, b"host") or "")
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


async def _json(send: Any, status: int, body: dict, retry_after: float | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="topdog"'))
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


mcp_application = McpApplication()
