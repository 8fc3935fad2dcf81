"""Many clients leaving at once leave no group member behind.

A membership that is not discarded lingers in Redis until the group's expiry, and every
group_send keeps queueing messages for a channel nobody reads. With redis-py 8 a pool
holds at most 100 connections, and hundreds of consumers discarding their groups at the
same moment used to fail with MaxConnectionsError, leaving exactly those members.
"""

import asyncio
import logging

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings as django_settings
from redis.exceptions import MaxConnectionsError

from tests.factories import workflow_for
from tests.workflows.consumers.conftest import communicator
from workflows import consumers
from workflows.broadcast import BoundedRedisChannelLayer, project_group, workflow_group

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
needs_redis = pytest.mark.skipif(
    not django_settings.REDIS_URL, reason="needs REDIS_URL (CI sets it)"
)

WORKFLOW_CLIENTS = 150
DASHBOARD_CLIENTS = 50


def _members(groups: list[str]) -> dict[str, int]:
    prefix = get_channel_layer().prefix
    client = redis.Redis.from_url(django_settings.REDIS_URL, socket_timeout=5)
    try:
        return {group: client.zcard(f"{prefix}:group:{group}") for group in groups}
    finally:
        client.close()


@needs_redis
async def test_hundreds_of_clients_leaving_at_once_leave_no_member_and_raise_nothing(
    project, user, token, settings
):
    settings.TOPDOG_WS_MAX_SOCKETS_PER_USER = WORKFLOW_CLIENTS + DASHBOARD_CLIENTS  # one user
    workflow = await database_sync_to_async(workflow_for)(project, user)
    groups = [workflow_group(workflow.id), project_group(project.id)]
    clients = [
        # after its one event: the first frame is replay.done
        communicator(f"/ws/workflows/{workflow.id}/?after=1", token)
        for _ in range(WORKFLOW_CLIENTS)
    ] + [communicator("/ws/dashboard/", token) for _ in range(DASHBOARD_CLIENTS)]

    connected = await asyncio.gather(*(ws.connect(timeout=60) for ws in clients))
    assert all(ok for ok, _ in connected)
    # A consumer accepts first and joins its groups after; its first frame (replay.done or
    # the dashboard snapshot) comes once it has joined.
    firsts = await asyncio.gather(*(ws.receive_json_from(timeout=60) for ws in clients))
    assert {first["type"] for first in firsts} == {"replay.done", "snapshot"}
    members = await database_sync_to_async(_members)(groups)
    assert members == {groups[0]: WORKFLOW_CLIENTS, groups[1]: DASHBOARD_CLIENTS}

    # when: every client leaves at the same moment
    # (Now and then one consumer's channel-layer receive, cancelled as it stops, goes on
    # polling Redis inside channels-redis; the communicator cancels it again after the
    # timeout, as daphne does after 10 s. Its groups were discarded before that.)
    outcomes = await asyncio.gather(
        *(ws.disconnect(timeout=5) for ws in clients), return_exceptions=True
    )

    # then: every consumer stopped cleanly and discarded every membership
    failures = [repr(x) for x in outcomes if isinstance(x, BaseException)]
    assert failures == [], f"{len(failures)} consumers failed to close: {failures[:3]}"
    assert await database_sync_to_async(_members)(groups) == dict.fromkeys(groups, 0)


@pytest.mark.django_db(transaction=False)
async def test_the_redis_layer_runs_at_most_in_flight_operations_at_once_per_loop(monkeypatch):
    running, most = 0, 0

    async def slow(self, *args):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    for name in ("send", "group_add", "group_discard", "group_send"):
        monkeypatch.setattr(RedisChannelLayer, name, slow)
    layer = BoundedRedisChannelLayer(in_flight=5)

    await asyncio.gather(
        *(layer.group_discard("g", f"c.{n}") for n in range(40)),
        *(layer.group_add("g", f"c.{n}") for n in range(20)),
        layer.group_send("g", {"type": "x"}),
        layer.send("c.1", {"type": "x"}),
    )

    assert most == 5 and running == 0


async def _connected(token, workflow):
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    assert (await ws.connect(timeout=10))[0]
    while (await ws.receive_json_from(timeout=5))["type"] != "replay.done":
        pass
    return ws


async def test_a_failed_discard_is_retried_and_the_member_leaves(project, user, token, monkeypatch):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = await _connected(token, workflow)
    layer = get_channel_layer()
    real, failures = layer.group_discard, []

    async def flaky(group, channel):
        if len(failures) < 2:
            failures.append(group)
            raise MaxConnectionsError("Too many connections")
        await real(group, channel)

    monkeypatch.setattr(layer, "group_discard", flaky)
    await ws.disconnect(timeout=10)  # raises if the consumer did

    assert len(failures) == 2
    group = workflow_group(workflow.id)
    if django_settings.REDIS_URL:
        assert await database_sync_to_async(_members)([group]) == {group: 0}
    else:
        assert group not in layer.groups


async def test_a_discard_that_keeps_failing_is_logged_and_the_consumer_still_stops(
    project, user, token, monkeypatch, caplog
):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = await _connected(token, workflow)
    layer = get_channel_layer()

    async def down(group, channel):
        raise ConnectionRefusedError("redis is down")

    monkeypatch.setattr(layer, "group_discard", down)
    monkeypatch.setattr(consumers, "GROUP_DISCARD_ATTEMPTS", 2)
    with caplog.at_level(logging.WARNING, logger="workflows.consumers"):
        await ws.disconnect(timeout=10)

    assert f"could not leave {workflow_group(workflow.id)} after 2 attempts" in caplog.text
    # disconnect() ran: the heartbeat stopped with the consumer
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if "_heartbeat" in repr(t.get_coro())]
