"""start_autopilot over MCP: the live server queues the run, a task worker completes it.

The live server runs no worker of its own, so this test runs the in-process worker
(`manage.py serve`'s) in batch mode on its own main thread: it works the queued step,
and each step queues the next, until the run has finished.
"""

import time

import anyio
import pytest

from ai_orchestration.inprocess_worker import worker_run
from ai_orchestration.models import AIRun
from tests.ai_orchestration.mcp.conftest import body, mcp_session
from tests.factories import api_token_for, workflow_for
from workflows.models import Handoff

pytestmark = pytest.mark.django_db(transaction=True)


def test_start_autopilot_completes_a_workflow_with_the_offline_provider(
    live_server_url, user, local_project
):
    workflow_id = str(workflow_for(local_project, user).id)
    token = api_token_for(user)

    async def start():
        async with mcp_session(live_server_url, token) as session:
            return body(await session.call_tool("start_autopilot", {"workflow_id": workflow_id}))

    async def afterwards(run_id):
        async with mcp_session(live_server_url, token) as session:
            status = body(await session.call_tool("get_status", {"workflow_id": workflow_id}))
            cancel = {"workflow_id": workflow_id, "run_id": run_id}
            return status, body(await session.call_tool("cancel_run", cancel))

    run = anyio.run(start)
    # A batch ends when the queue is empty for a moment; IMPLEMENTATION's work items are
    # tasks of their own that a finishing item or the reaper queues, so run batches until
    # the run is done (bounded).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        worker_run(interval=0.01, batch=True, verbosity=0)
        if not AIRun.objects.filter(pk=run["id"], status__in=AIRun.ACTIVE).exists():
            break
        time.sleep(0.2)
    status, cancelled = anyio.run(afterwards, run["id"])

    # the run was queued for every phase, on the offline model
    assert run["status"] == "queued"
    assert run["scope"] == "workflow"
    # the worker took it to COMPLETE, every handoff the autopilot's
    assert status["current_state"] == "COMPLETE"
    finished = AIRun.objects.get(pk=run["id"])
    assert finished.status == AIRun.Status.COMPLETED
    assert finished.provider == "offline"
    assert finished.phases_completed == 6
    actors = set(
        Handoff.objects.filter(workflow_id=workflow_id).values_list("actor_name", flat=True)
    )
    assert actors == {"autopilot"}
    # a finished run cannot be cancelled: the REST API's 409
    assert cancelled["status"] == 409
    assert cancelled["detail"].startswith("run is completed")
