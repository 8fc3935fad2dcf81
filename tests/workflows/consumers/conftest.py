import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.factories import api_token_for, evidence
from topdog.asgi import application
from workflows.services import Actor, workflow_phase_complete


def communicator(
    path: str, token: str | None = None, origin: str | None = None, host: str | None = None
):
    headers = [(b"host", host.encode())] if host else []
    if token:
        headers.append((b"authorization", f"Token {token}".encode()))
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
