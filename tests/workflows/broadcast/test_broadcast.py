"""Broadcasting committed events: handed to the ASGI server's loop, or to this process's
sender loop."""

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

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


class CrossProcessLayer(RecordingLayer):
    """Stands for channels-redis: its messages are read by other processes. Each send
    takes a while, and sends that overlapped would finish out of order."""

    def __init__(self, delays=(0.02, 0.0)):
        super().__init__()
        self.delays = iter(delays * 1000)

    async def group_send(self, group: str, message: dict) -> None:
        await asyncio.sleep(next(self.delays))
        await super().group_send(group, message)


CrossProcessLayer.__module__ = "channels_redis.stand_in"


def numbered(first: int) -> list[WorkflowEvent]:
    workflow = Workflow(project=Project(slug="demo"), title="t", requirements={})
    return [
        WorkflowEvent(workflow=workflow, seq=first, type="t", data={}, created_at=timezone.now())
    ]


def test_a_worker_hands_sends_to_one_sender_loop_and_goes_on_in_order(layer_is):
    # given: a task worker (no server loop) on a layer other processes read
    layer = layer_is(CrossProcessLayer())
    broadcast.broadcast_flush()
    threads_before = {t.ident for t in threading.enumerate()}

    # when: it commits 50 times
    for seq in range(1, 51):
        workflow_events_broadcast(events=numbered(seq))

    # then: it did not wait for the sends (each takes 20 ms every other send) ...
    assert len(layer.sent) < 100
    # ... and no thread was started for them but the sender loop's, at most once
    started = {t.name for t in threading.enumerate() if t.ident not in threads_before}
    assert started <= {"topdog-broadcast"}
    # and once flushed, every send went out in the order of the commits
    assert broadcast.broadcast_flush(timeout=10)
    assert [seqs[0] for _, seqs in layer.sent[::2]] == list(range(1, 51))
    assert [seqs[0] for _, seqs in layer.sent[1::2]] == list(range(1, 51))


def test_a_failed_send_on_the_sender_loop_is_logged_and_later_sends_go_on(layer_is, caplog):
    failing = layer_is(RecordingLayer(error=ConnectionError("layer down")))
    failing.__class__ = type("Failing", (RecordingLayer,), {"__module__": "channels_redis.x"})
    with caplog.at_level(logging.ERROR, logger="workflows.broadcast"):
        workflow_events_broadcast(events=events())
        assert broadcast.broadcast_flush(timeout=5)
    assert "broadcast of workflow events failed" in caplog.text
    assert "layer down" in caplog.text

    layer = layer_is(CrossProcessLayer())
    workflow_events_broadcast(events=events())
    assert broadcast.broadcast_flush(timeout=5)
    assert [seqs for _, seqs in layer.sent] == [[4, 5], [4, 5]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_through_a_sender_loop_of_its_own(layer_is):
    layer = layer_is(RecordingLayer())
    workflow_events_broadcast(events=events())  # the parent's sender loop is running
    parent_sender = broadcast._sender
    assert parent_sender is not None and parent_sender.thread.is_alive()

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sent, and exit without pytest's cleanup
        code = 1
        try:
            layer.sent.clear()
            workflow_events_broadcast(events=events())
            child_sender = broadcast._sender
            fresh = child_sender is not parent_sender and child_sender.thread.is_alive()
            os.write(write, f"{fresh} {[seqs for _, seqs in layer.sent]}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as reader:
        answer = reader.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True [[4, 5], [4, 5]]"


def test_a_command_that_exits_right_after_its_commit_still_sends(tmp_path):
    # given: a process whose layer takes 0.5 s per send and that exits at once
    out = tmp_path / "sent.txt"
    script = textwrap.dedent(
        f"""
        import asyncio
        from tests.workflows.broadcast import test_broadcast as t
        from workflows import broadcast

        class Slow(t.RecordingLayer):
            async def group_send(self, group, message):
                await asyncio.sleep(0.5)
                await super().group_send(group, message)
                with open({str(out)!r}, "a") as f:
                    f.write(group.split(".")[0] + "\\n")

        Slow.__module__ = "channels_redis.stand_in"
        layer = Slow()
        broadcast.get_channel_layer = lambda: layer
        broadcast.workflow_events_broadcast(events=t.events())
        assert layer.sent == []  # not waited for
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "topdog.settings"}
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{script}"],
        check=True,
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        timeout=60,
    )
    # then: both groups got it before the process ended
    assert out.read_text().split() == ["workflow", "project"]


def test_topdogs_redis_layer_is_not_waited_for_and_the_in_memory_one_is():
    from channels.layers import InMemoryChannelLayer

    from workflows.broadcast import BoundedRedisChannelLayer

    assert broadcast._cross_process(BoundedRedisChannelLayer())
    assert not broadcast._cross_process(InMemoryChannelLayer())


def test_the_health_roundtrip_runs_on_the_sender_loop_without_threads_of_its_own():
    broadcast.channel_layer_roundtrip(timeout=2.0)  # the sender loop exists from here on
    threads = threading.active_count()
    for _ in range(20):
        assert broadcast.channel_layer_roundtrip(timeout=2.0)
    assert threading.active_count() == threads
