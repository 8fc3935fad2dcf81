"""Broadcasting committed events: handed to the ASGI server's loop, or sent in place."""

import asyncio
import logging

import pytest
from django.utils import timezone

from workflows import broadcast
from workflows.broadcast import workflow_events_broadcast
from workflows.models import Project, Workflow, WorkflowEvent


class RecordingLayer:
    """A channel layer whose sends wait for `gate` (when given) and may fail."""

    def __init__(self, gate: asyncio.Event | None = None, error: Exception | None = None):
        self.gate, self.error, self.sent = gate, error, []

    async def group_send(self, group: str, message: dict) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.sent.append((group, [frame["seq"] for frame in message["frames"]]))


def events() -> list[WorkflowEvent]:
    workflow = Workflow(project=Project(slug="demo"), title="t", requirements={})
    return [
        WorkflowEvent(workflow=workflow, seq=seq, type="t", data={}, created_at=timezone.now())
        for seq in (4, 5)
    ]


@pytest.fixture
def layer_is(monkeypatch):
    monkeypatch.setattr(broadcast, "_server_loop", None)  # put back after the test

    def use(layer: RecordingLayer) -> RecordingLayer:
        monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
        return layer

    return use


@pytest.mark.asyncio
async def test_a_view_thread_hands_its_events_to_the_server_loop_and_goes_on(layer_is):
    # given: this loop is the server's, and the layer is slow to send
    broadcast.broadcast_loop_set(asyncio.get_running_loop())
    layer = layer_is(RecordingLayer(gate=asyncio.Event()))

    # when: a worker thread broadcasts
    await asyncio.wait_for(asyncio.to_thread(workflow_events_broadcast, events=events()), 2)

    # then: it returned before anything was sent; the loop sends both groups, in seq order
    assert layer.sent == []
    layer.gate.set()
    for _ in range(100):
        if len(layer.sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert [seqs for _, seqs in layer.sent] == [[4, 5], [4, 5]]
    assert layer.sent[0][0].startswith("workflow.") and layer.sent[1][0].startswith("project.")


@pytest.mark.asyncio
async def test_a_failed_send_on_the_server_loop_is_logged(layer_is, caplog):
    broadcast.broadcast_loop_set(asyncio.get_running_loop())
    layer_is(RecordingLayer(error=ConnectionError("layer down")))

    with caplog.at_level(logging.ERROR, logger="workflows.broadcast"):
        await asyncio.to_thread(workflow_events_broadcast, events=events())
        for _ in range(100):
            if "failed" in caplog.text:
                break
            await asyncio.sleep(0.01)

    assert "broadcast of workflow events failed" in caplog.text
    assert "layer down" in caplog.text


@pytest.mark.parametrize("loop", ["none", "closed"])
def test_without_a_running_server_loop_events_are_sent_before_returning(layer_is, loop):
    # given: a task worker or a command (no server loop, or one that has stopped)
    if loop == "closed":
        stopped = asyncio.new_event_loop()
        stopped.close()
        broadcast.broadcast_loop_set(stopped)
    layer = layer_is(RecordingLayer())

    # when
    workflow_events_broadcast(events=events())

    # then: both groups have them already
    assert [seqs for _, seqs in layer.sent] == [[4, 5], [4, 5]]
