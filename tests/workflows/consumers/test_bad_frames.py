"""Client frames the server cannot read get an error frame, never a 1011 close."""

import json

import pytest
from channels.db import database_sync_to_async

from tests.factories import workflow_for
from tests.workflows.consumers.conftest import communicator

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

# The frames as the server hands them over (`text` or `bytes`).
BAD_FRAMES = {
    "not JSON": {"text": "ping, please"},
    "empty": {"text": ""},
    "1000 deep": {"text": "[" * 1000 + "]" * 1000},
    "100000 deep": {"text": '{"a":' * 100_000 + "1" + "}" * 100_000},
    "over-size": {"text": json.dumps({"type": "ping", "pad": "x" * 20_000})},
    "over-size in UTF-8": {
        "text": json.dumps({"type": "ping", "pad": "é" * 9_000}, ensure_ascii=False)
    },
    "binary": {"bytes": b'{"type": "ping"}'},
    "empty binary": {"bytes": b""},
    "resume after infinity": {"text": '{"type": "resume", "after": Infinity}'},
    "a list": {"text": "[1, 2]"},
}


async def _open(route: str, project, user, token):
    if route == "dashboard":
        ws = communicator("/ws/dashboard/", token)
        await ws.connect()
        assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        return ws
    workflow = await database_sync_to_async(workflow_for)(project, user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    await ws.connect()
    while (await ws.receive_json_from(timeout=5))["type"] != "replay.done":
        pass
    return ws


@pytest.mark.parametrize("route", ["workflow", "dashboard"])
@pytest.mark.parametrize("bad", BAD_FRAMES)
async def test_a_bad_frame_gets_an_error_frame_and_the_socket_goes_on(
    project, user, token, route, bad
):
    ws = await _open(route, project, user, token)

    await ws.send_input({"type": "websocket.receive", **BAD_FRAMES[bad]})

    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    assert frame["detail"]
    # the socket still works
    await ws.send_json_to({"type": "ping"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "pong"
    await ws.disconnect()


async def test_error_frames_say_what_was_wrong(project, user, token, settings):
    settings.TOPDOG_WS_MAX_MESSAGE_BYTES = 100
    settings.TOPDOG_MAX_JSON_DEPTH = 3
    ws = await _open("workflow", project, user, token)
    details = []
    for frame in ("nope", "[[[[1]]]]", "x" * 101, b"\x00"):
        key = "bytes_data" if isinstance(frame, bytes) else "text_data"
        await ws.send_to(**{key: frame})
        details.append((await ws.receive_json_from(timeout=5))["detail"])
    assert details[0].startswith("not valid JSON")
    assert "deeper than 3" in details[1]
    assert "over 100 bytes" in details[2]
    assert "binary" in details[3]
    # the limits are the settings': three levels and 100 bytes pass
    await ws.send_to(text_data='{"type": "ping", "x": [[1]]}')
    assert (await ws.receive_json_from(timeout=5))["type"] == "pong"
    await ws.disconnect()
