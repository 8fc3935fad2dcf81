"""The embedded default: the in-process worker's live frames reach websocket clients."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from ai_orchestration.autopilot import autopilot_start
from tests.factories import api_token_for, workflow_for
from tests.workflows.consumers.conftest import communicator
from topdog.inprocess_worker import InProcessWorker
from workflows.models import Workflow
from workflows.services import Actor

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_in_process_worker_runs_the_autopilot_and_streams_to_the_socket(project, user):
    workflow = await database_sync_to_async(workflow_for)(project, user)
    token = await database_sync_to_async(api_token_for)(user)
    ws = communicator(f"/ws/workflows/{workflow.id}/", token)
    assert (await ws.connect())[0]

    worker = InProcessWorker(interval=0.05)
    running = asyncio.create_task(worker.run())
    try:
        await database_sync_to_async(autopilot_start)(workflow_id=workflow.id, actor=Actor.of(user))
        kinds, seqs = set(), []
        while "COMPLETE" not in kinds:
            frame = await ws.receive_json_from(timeout=20)
            kinds.add(frame["type"])
            if "seq" in frame:
                seqs.append(frame["seq"])
                if frame["data"].get("to_state") == "COMPLETE":
                    kinds.add("COMPLETE")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await ws.disconnect()
    assert {"ai.delta", "ai.run", "workflow.transitioned"} <= kinds
    assert seqs == list(range(1, len(seqs) + 1))
    state = await database_sync_to_async(lambda: Workflow.objects.get(pk=workflow.pk).state)()
    assert state == "COMPLETE"
