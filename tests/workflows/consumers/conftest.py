import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.factories import api_token_for, evidence
from topdog.asgi import application
from workflows.services import Actor, workflow_phase_complete


def communicator(
    path: str,
    token: str | None = None,
    origin: str | None = None,
    host: str | None = None,
    cookie: str | None = None,
):
    headers = [(b"host", host.encode())] if host else []
    if token:
        headers.append((b"authorization", f"Token {token}".encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.fixture
def token(user):
    return api_token_for(user)


complete = database_sync_to_async(
    lambda workflow, user, phase: workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response="ok",
        result=evidence(phase),
        actor=Actor.of(user),
    )
)


async def frames_until_close(ws, timeout: float = 5, most: int = 50) -> tuple[list[dict], dict]:
    """The JSON frames a socket sends until it closes (at most `most` of them, each within
    `timeout` seconds), and its close message."""
    frames = []
    while len(frames) <= most:
        output = await ws.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return frames, output
        frames.append(json.loads(output["text"]))
    raise AssertionError(f"still open after {most} frames: {frames[-3:]}")
