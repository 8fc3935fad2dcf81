"""Open websockets per user and messages per second per connection: over either, 4429."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings

from tests.factories import UserFactory, api_token_for, workflow_for
from tests.workflows.consumers.conftest import communicator, frames_until_close
from workflows import socket_limits
from workflows.consumers import CLOSE_TOO_MANY

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

needs_redis = pytest.mark.skipif(
    not django_settings.REDIS_URL, reason="needs REDIS_URL (CI sets it)"
)


async def _dashboard(token):
    ws = communicator("/ws/dashboard/", token)
    assert (await ws.connect(timeout=10))[0]
    return ws


async def test_the_51st_socket_of_a_user_closes_4429_and_a_closed_one_frees_its_slot(
    project, user, token, stranger, settings
):
    assert settings.TOPDOG_WS_MAX_SOCKETS_PER_USER == 50  # the default
    # given 50 open sockets of one user
    held = await asyncio.gather(*(_dashboard(token) for _ in range(50)))
    firsts = await asyncio.gather(*(ws.receive_json_from(timeout=10) for ws in held))
    assert {first["type"] for first in firsts} == {"snapshot"}

    # when the user opens a 51st, it is closed with 4429 and a reason
    extra = await _dashboard(token)
    _, closed = await frames_until_close(extra)
    assert closed["code"] == CLOSE_TOO_MANY
    assert "50" in closed["reason"]
    await extra.disconnect()

    # while another user's socket is fine
    theirs = await _dashboard(await database_sync_to_async(api_token_for)(stranger))
    assert (await theirs.receive_json_from(timeout=5))["type"] == "snapshot"
    await theirs.disconnect()

    # and once one of the 50 has closed, a new one is let in
    await held.pop().disconnect()
    again = await _dashboard(token)
    assert (await again.receive_json_from(timeout=5))["type"] == "snapshot"
    held.append(again)
    await asyncio.gather(*(ws.disconnect() for ws in held))


async def test_the_limit_counts_both_routes(project, user, token, settings):
    settings.TOPDOG_WS_MAX_SOCKETS_PER_USER = 2
    workflow = await database_sync_to_async(workflow_for)(project, user)
    first = await _dashboard(token)
    second = communicator(f"/ws/workflows/{workflow.id}/", token)
    await second.connect()
    third = communicator(f"/ws/workflows/{workflow.id}/", token)
    await third.connect()

    _, closed = await frames_until_close(third)
    assert closed["code"] == CLOSE_TOO_MANY
    for ws in (first, second, third):
        await ws.disconnect()


@pytest.mark.parametrize("route", ["workflow", "dashboard"])
async def test_21_messages_in_a_second_close_4429(project, user, token, route):
    path = "/ws/dashboard/"
    if route == "workflow":
        workflow = await database_sync_to_async(workflow_for)(project, user)
        path = f"/ws/workflows/{workflow.id}/"
    ws = communicator(path, token)
    await ws.connect()
    await ws.receive_json_from(timeout=5)  # replay.done after seq 1, or the snapshot
    if route == "workflow":
        await ws.receive_json_from(timeout=5)

    # pings, resume requests and bad frames all count
    frames = [{"type": "ping"}] * 10 + [{"type": "resume", "after": 1}] * 5 + ["?"] * 5
    for frame in [*frames, {"type": "ping"}]:
        if isinstance(frame, str):
            await ws.send_to(text_data=frame)
        else:
            await ws.send_json_to(frame)

    answers, closed = await frames_until_close(ws)
    assert closed["code"] == CLOSE_TOO_MANY
    assert "20 messages" in closed["reason"]
    assert sum(1 for answer in answers if answer["type"] in ("pong", "error")) == 15 + 5 * (
        route == "dashboard"
    )
    await ws.disconnect()


async def test_a_steady_client_under_the_rate_stays_open(project, user, token, settings):
    settings.TOPDOG_WS_MAX_MESSAGES_PER_SECOND = 5
    ws = await _dashboard(token)
    await ws.receive_json_from(timeout=5)
    for _ in range(8):
        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(timeout=5) == {"type": "pong"}
        await asyncio.sleep(0.25)  # 4 a second
    await ws.disconnect()


# --- slots: shared, and expiring when their node is gone ---------------------------------


@pytest.fixture(params=["process", pytest.param("redis", marks=needs_redis)])
def slot_store(request, settings):
    if request.param == "process":
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    else:
        assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    return request.param


async def test_slots_of_a_dead_node_expire(slot_store):
    user = await database_sync_to_async(UserFactory)(username="slots")

    async def claim(connection: str) -> bool:
        return await socket_limits.socket_slot_claim(
            user_id=user.pk, connection=connection, limit=2, ttl=0.3
        )

    # a node holds two slots of the user, then dies without giving them back
    assert await claim("node-a.1") and await claim("node-a.2")
    assert not await claim("node-b.1")
    # a refresh keeps a held slot; it never takes a third
    await socket_limits.socket_slot_refresh(user_id=user.pk, connection="node-a.1", ttl=0.3)
    assert not await claim("node-b.1")

    await asyncio.sleep(0.4)  # past the slots' lifetime

    assert await claim("node-b.1") and await claim("node-b.2")
    assert not await claim("node-b.3")
    await socket_limits.socket_slot_release(user_id=user.pk, connection="node-b.1")
    assert await claim("node-b.3")


async def test_the_message_window_refuses_the_21st_within_a_second():
    window = socket_limits.MessageWindow(20)
    assert all(window.allow(100.0 + n * 0.01) for n in range(20))
    assert not window.allow(100.5)
    assert window.allow(101.0)  # the first has left the window
    assert socket_limits.MessageWindow(0).allow(0.0)  # 0: no limit
