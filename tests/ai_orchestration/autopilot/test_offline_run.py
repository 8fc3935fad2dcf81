"""A whole workflow on autopilot with the offline provider."""

import pytest
from channels.layers import get_channel_layer

from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.factories import workflow_for
from workflows.broadcast import workflow_group
from workflows.models import Handoff, Message, PhaseResult, WorkflowEvent
from workflows.services import Actor

pytestmark = pytest.mark.django_db


def run_to_end(run_id) -> int:
    steps = 0
    while autopilot_step(run_id=run_id, worker_id="test-worker"):
        steps += 1
        assert steps < 50
    return steps


def test_offline_autopilot_runs_a_workflow_to_complete(
    project, user, django_capture_on_commit_callbacks
):
    # given a workflow and a websocket listener on its group
    workflow = workflow_for(project, user, description="Add dark mode to settings. Persist it.")
    layer = get_channel_layer()
    from asgiref.sync import async_to_sync

    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(workflow_group(workflow.id), channel)

    # when the autopilot runs the whole workflow
    with django_capture_on_commit_callbacks(execute=True):
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    run.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        run_to_end(run.id)

    # then it is COMPLETE after six phases and five role handoffs, with tokens recorded
    workflow.refresh_from_db()
    run.refresh_from_db()
    assert workflow.state == "COMPLETE"
    assert run.status == AIRun.Status.COMPLETED
    assert run.phases_completed == 6
    assert PhaseResult.objects.filter(workflow=workflow).count() == 6
    handoffs = list(Handoff.objects.filter(workflow=workflow).order_by("event_seq"))
    assert len(handoffs) == 6
    role_changes = [h for h in handoffs if h.to_role and h.from_role != h.to_role]
    assert len(role_changes) == 4  # Q→CODE, CODE→TEST, TEST→VERIFY, VERIFY→RELEASE
    assert {h.actor_name for h in handoffs} == {"autopilot"}
    messages = Message.objects.filter(workflow=workflow, sender="assistant")
    assert messages.count() == 6
    assert all(m.provider == "offline" and m.output_tokens > 0 for m in messages)
    assert workflow.output_tokens == sum(m.output_tokens for m in messages) > 0
    assert run.output_tokens == workflow.output_tokens

    # and events streamed: ai.delta frames and the persisted events
    frames = []
    while True:
        try:
            message = async_to_sync(_receive_nowait)(layer, channel)
        except TimeoutError:
            break
        frames.append(message)
    kinds = [f.get("frame", {}).get("type") for f in frames] + [
        frame["type"] for f in frames for frame in f.get("frames", [])
    ]
    assert "ai.delta" in kinds
    assert "workflow.transitioned" in kinds
    seqs = list(WorkflowEvent.objects.filter(workflow=workflow).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


async def _receive_nowait(layer, channel):
    import asyncio

    # Everything was sent before we read; the wait only has to outlast a Redis round trip
    # on a loaded CI machine (0.05 s did not, and cut the reading short).
    return await asyncio.wait_for(layer.receive(channel), timeout=1)
