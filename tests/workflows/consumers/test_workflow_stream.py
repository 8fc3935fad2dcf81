"""`/ws/workflows/<id>/`: replay after a seq, then live events, never a gap or duplicate."""

import pytest
from channels.db import database_sync_to_async

from tests.factories import api_token_for, workflow_for
from tests.workflows.consumers.conftest import communicator, complete
from workflows.consumers import CLOSE_NOT_FOUND, CLOSE_RESYNC, CLOSE_UNAUTHORISED
from workflows.models import WorkflowEvent

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def _frames_until_replay_done(ws) -> list[dict]:
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] == "replay.done":
            return frames
        frames.append(frame)


async def test_connect_after_n_replays_exactly_the_later_events_then_live_ones(
    project, user, token
):
    # given a workflow with 5 persisted events
    workflow = await database_sync_to_async(workflow_for)(project, user)
    for phase in ("DISCOVERY", "PLANNING"):
        await complete(workflow, user, phase)
    assert (
        await database_sync_to_async(WorkflowEvent.objects.filter(workflow=workflow).count)() == 5
    )

    # when a client resumes after seq 2
    ws = communicator(f"/ws/workflows/{workflow.id}/?after=2", token)
    connected, _ = await ws.connect()
    assert connected
    replayed = await _frames_until_replay_done(ws)

    # then it gets exactly 3, 4, 5 with the documented frame shape
    assert [f["seq"] for f in replayed] == [3, 4, 5]
    assert set(replayed[0]) == {"type", "seq", "workflow_id", "data", "at"}
    assert replayed[0]["workflow_id"] == str(workflow.id)

    # and then the live events of the next transition, in order
    await complete(workflow, user, "IMPLEMENTATION")
    live = [await ws.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["seq"] for f in live] == [6, 7]
    assert live[1]["type"] == "workflow.transitioned"
    assert live[1]["data"]["to_state"] == "TESTING"
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


async def test_duplicate_live_frames_are_dropped_and_gaps_filled_from_the_database(
    project, user, token
):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    assert [f["seq"] for f in await _frames_until_replay_done(ws)] == [1]

    # events 2..4 are committed, but the layer "loses" them: only seq 4 is delivered
    await complete(workflow, user, "DISCOVERY")  # seq 2, 3
    await ws.receive_json_from(timeout=5)
    await ws.receive_json_from(timeout=5)
    from channels.layers import get_channel_layer

    from workflows.broadcast import event_frame, workflow_group

    await complete(workflow, user, "PLANNING")  # seq 4, 5 delivered live as usual
    got = [await ws.receive_json_from(timeout=5) for _ in range(2)]
    assert [f["seq"] for f in got] == [4, 5]
    # a stale duplicate of seq 3 arriving late is dropped
    events = await database_sync_to_async(
        lambda: list(WorkflowEvent.objects.filter(workflow=workflow).order_by("seq"))
    )()
    layer = get_channel_layer()
    await layer.group_send(
        workflow_group(workflow.id), {"type": "workflow.events", "frames": [event_frame(events[2])]}
    )
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


async def test_a_gap_in_live_delivery_is_filled_from_the_database(project, user, token):
    from channels.layers import get_channel_layer

    from workflows.broadcast import event_frame, workflow_group

    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    await _frames_until_replay_done(ws)
    # commit seq 2..3 without broadcasting (as if the layer dropped both) ...
    from unittest import mock

    with mock.patch("workflows.services.workflow_events_broadcast"):
        await complete(workflow, user, "DISCOVERY")
        await complete(workflow, user, "PLANNING")
    events = await database_sync_to_async(
        lambda: list(WorkflowEvent.objects.filter(workflow=workflow).order_by("seq"))
    )()
    # ... then only the last one (seq 5) arrives live
    await get_channel_layer().group_send(
        workflow_group(workflow.id),
        {"type": "workflow.events", "frames": [event_frame(events[-1])]},
    )
    got = [await ws.receive_json_from(timeout=5) for _ in range(4)]
    assert [f["seq"] for f in got] == [2, 3, 4, 5]
    await ws.disconnect()


async def test_client_far_behind_is_told_to_resync(project, user, token, settings):
    settings.TOPDOG_WS_REPLAY_LIMIT = 2
    workflow = await database_sync_to_async(workflow_for)(project, user)
    await complete(workflow, user, "DISCOVERY")
    ws = communicator(f"/ws/workflows/{workflow.id}/?after=0", token)
    await ws.connect()
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "resync"
    assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": CLOSE_RESYNC}


async def test_ping_pong_and_resume(project, user, token):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    await complete(workflow, user, "DISCOVERY")
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    assert [f["seq"] for f in await _frames_until_replay_done(ws)] == [1, 2, 3]
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(timeout=5) == {"type": "pong", "last_seq": 3}
    await ws.send_json_to({"type": "resume", "after": 1})
    assert [(await ws.receive_json_from(timeout=5))["seq"] for _ in range(2)] == [2, 3]
    await ws.disconnect()


async def test_heartbeat_recovers_a_dropped_last_event(project, user, token, settings):
    from unittest import mock

    settings.TOPDOG_WS_HEARTBEAT_SECONDS = 0.2
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    await _frames_until_replay_done(ws)
    with mock.patch("workflows.services.workflow_events_broadcast"):
        await complete(workflow, user, "DISCOVERY")  # never delivered live
    got = [await ws.receive_json_from(timeout=5) for _ in range(3)]
    assert [f.get("seq") for f in got[:2]] == [2, 3]
    assert got[2] == {"type": "heartbeat", "last_seq": 3}
    await ws.disconnect()


async def test_heartbeat_of_an_up_to_date_socket_reads_no_events(project, user, token, settings):
    from unittest import mock

    from workflows import selectors

    # given a socket that has every stored event
    settings.TOPDOG_WS_HEARTBEAT_SECONDS = 0.2
    workflow = await database_sync_to_async(workflow_for)(project, user)
    await complete(workflow, user, "DISCOVERY")
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    assert [f["seq"] for f in await _frames_until_replay_done(ws)] == [1, 2, 3]

    # when two heartbeats go by
    with mock.patch.object(
        selectors, "workflow_event_frames", wraps=selectors.workflow_event_frames
    ) as frames:
        beats = [await ws.receive_json_from(timeout=5) for _ in range(2)]

    # then they re-checked access but did not query the events: nothing was behind
    assert beats == [{"type": "heartbeat", "last_seq": 3}] * 2
    assert frames.call_count == 0
    await ws.disconnect()


@pytest.mark.parametrize("who", ["anonymous", "stranger", "bad-token"])
async def test_strangers_and_anonymous_are_refused(project, user, stranger, who):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    token = {
        "anonymous": None,
        "stranger": await database_sync_to_async(api_token_for)(stranger),
        "bad-token": "td_nope",
    }[who]
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    connected, _ = await ws.connect()
    assert connected  # accepted so that the close code can say why
    expected = CLOSE_NOT_FOUND if who == "stranger" else CLOSE_UNAUTHORISED
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": expected}


async def test_stranger_is_refused_exactly_like_an_unknown_workflow(project, stranger):
    import uuid

    token = await database_sync_to_async(api_token_for)(stranger)
    ws = communicator(f"/ws/workflows/{uuid.uuid4()}/", token)
    await ws.connect()
    assert await ws.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": CLOSE_NOT_FOUND,
    }


async def test_foreign_browser_origin_is_refused(project, user, token):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token, origin="https://evil.example")
    connected, _ = await ws.connect()
    assert not connected
    ok = communicator(
        f"/ws/workflows/{workflow.id}/",
        token,
        origin="http://localhost:8000",
        host="localhost:8000",
    )
    connected, _ = await ok.connect()
    assert connected
    await ok.disconnect()


async def test_token_in_subprotocol_for_browsers(project, user, token):
    from channels.testing import WebsocketCommunicator

    from topdog.asgi import application

    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = WebsocketCommunicator(
        application,
        f"/ws/workflows/{workflow.id}/",
        subprotocols=["topdog.v1", f"token.{token}"],
    )
    connected, subprotocol = await ws.connect()
    assert connected
    assert subprotocol == "topdog.v1"
    assert [f["seq"] for f in await _frames_until_replay_done(ws)] == [1]
    await ws.disconnect()
