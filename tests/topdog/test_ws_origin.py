"""The websocket Origin check compares scheme, host and port (issue 12 E).

Before: the Origin's host alone was checked against ALLOWED_HOSTS, so a page on
http://localhost:9999 (any other local service, or an attacker's dev server) could open
a websocket to TopDog on :8000 with the victim's session cookie.
"""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.factories import api_token_for, workflow_for
from topdog.asgi import application
from topdog.ws_auth import origin_allowed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def scope(origin=None, host="localhost:8000", scheme="ws"):
    headers = []
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": headers}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("http://LOCALHOST:8000", "localhost:8000", "ws", True),
        ("http://localhost:9999", "localhost:8000", "ws", False),  # another port
        ("https://localhost:8000", "localhost:8000", "ws", False),  # another scheme
        ("http://127.0.0.1:8000", "localhost:8000", "ws", False),  # another host
        ("http://localhost", "localhost", "ws", True),  # default port 80 both sides
        ("http://localhost:80", "localhost", "ws", True),
        ("https://localhost", "localhost", "wss", True),
        ("http://localhost", "localhost", "wss", False),  # wss page served over http?
        ("https://localhost:8443", "localhost:8443", "wss", True),
        ("http://evil.example", "evil.example", "ws", False),  # not in ALLOWED_HOSTS
        ("null", "localhost:8000", "ws", False),
        ("garbage", "localhost:8000", "ws", False),
        ("http://localhost:8000", None, "ws", False),  # no Host: nothing to compare with
        (None, "localhost:8000", "ws", True),  # no Origin: not a browser
    ],
)
async def test_origin_must_be_the_hosts_own(origin, host, scheme, allowed):
    assert origin_allowed(scope(origin, host, scheme)) is allowed


async def test_csrf_trusted_origins_are_accepted_exactly(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://topdog.example.com", "https://*.example.org"]
    # behind a TLS proxy: the server sees ws and Host localhost:8000
    assert origin_allowed(scope("https://topdog.example.com"))
    assert origin_allowed(scope("https://topdog.example.com:443"))
    assert not origin_allowed(scope("https://topdog.example.com:8443"))
    assert not origin_allowed(scope("http://topdog.example.com"))
    assert not origin_allowed(scope("https://sub.example.org"))  # wildcards: not taken


async def test_handshake_from_another_port_on_localhost_is_refused(project, user):
    token = await database_sync_to_async(api_token_for)(user)
    workflow = await database_sync_to_async(workflow_for)(project, user)

    async def connect(origin):
        ws = WebsocketCommunicator(
            application,
            f"/ws/workflows/{workflow.id}/",
            headers=[
                (b"host", b"localhost:8000"),
                (b"origin", origin.encode()),
                (b"authorization", f"Token {token}".encode()),
            ],
        )
        connected, _ = await ws.connect()
        await ws.disconnect()  # refused ones too: no consumer task is left to the loop
        return connected

    assert await connect("http://localhost:8000")
    assert not await connect("http://localhost:9999")
    assert not await connect("https://localhost:8000")
