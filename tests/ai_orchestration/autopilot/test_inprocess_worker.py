"""The embedded default: the in-process worker's live frames reach websocket clients.

`worker_run` runs `manage.py db_worker` on the main thread (it installs signal
handlers), as `serve` does; the websocket client and its consumer run on an event loop
in another thread, as daphne's does beside it."""

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import Future

import pytest

from ai_orchestration import watchdog
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.inprocess_worker import worker_run
from ai_orchestration.watchdog import WatchdogThread
from tests.factories import api_token_for, workflow_for
from tests.workflows.consumers.conftest import communicator
from workflows.models import WorkerBeat, Workflow
from workflows.services import Actor

pytestmark = pytest.mark.django_db(transaction=True)


def test_in_process_worker_runs_the_autopilot_and_streams_to_the_socket(project, user):
    workflow = workflow_for(project, user)
    token = api_token_for(user)
    connected, frames = threading.Event(), Future()
    pytest_sigint = signal.getsignal(signal.SIGINT)
    watcher = threading.Thread(
        target=asyncio.run,
        args=(_watch(f"/ws/workflows/{workflow.id}/", token, connected, frames, pytest_sigint),),
    )
    watcher.start()
    assert connected.wait(20)

    # when: the autopilot starts, and the worker runs until the watcher has seen the
    # workflow complete and pressed Ctrl+C (SIGINT), as at the end of `serve`
    autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    worker_run(interval=0.05)
    watcher.join(30)

    # then: live frames and every event, in seq order, reached the socket
    kinds, seqs = frames.result(timeout=0)
    assert {"ai.delta", "ai.run", "workflow.transitioned"} <= kinds
    assert seqs == list(range(1, len(seqs) + 1))
    assert Workflow.objects.get(pk=workflow.pk).state == "COMPLETE"
    # and the worker put back the signal handlers it found
    assert signal.getsignal(signal.SIGINT) is pytest_sigint


async def _watch(path, token, connected, frames, pytest_sigint):
    ws = communicator(path, token)
    assert (await ws.connect())[0]
    connected.set()
    kinds, seqs = set(), []
    try:
        while "COMPLETE" not in kinds:
            frame = await ws.receive_json_from(timeout=20)
            kinds.add(frame["type"])
            if "seq" in frame:
                seqs.append(frame["seq"])
                if frame["data"].get("to_state") == "COMPLETE":
                    kinds.add("COMPLETE")
        frames.set_result((kinds, seqs))
    except BaseException as exc:
        frames.set_exception(exc)
    finally:
        _interrupt_the_worker(pytest_sigint)
        await ws.disconnect()


def _interrupt_the_worker(pytest_sigint, timeout: float = 20) -> None:
    """SIGINT once db_worker has taken the signal over (never to pytest itself)."""
    deadline = time.monotonic() + timeout
    while signal.getsignal(signal.SIGINT) is pytest_sigint:
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)


def test_the_worker_reaps_orphaned_runs_while_it_runs(monkeypatch):
    reaped = []
    monkeypatch.setattr(watchdog, "autopilot_reap", lambda: reaped.append(1) or [])

    # when: the worker runs until no task is ready (none is)
    worker_run(interval=0.01, batch=True)

    # then: the watchdog ran when it started, and both said they were alive
    assert reaped
    kinds = set(WorkerBeat.objects.values_list("kind", flat=True))
    assert kinds == {"worker", "watchdog"}
    assert not WorkerBeat.objects.filter(stopped_at__isnull=True).exists()  # and stopped


def test_the_watchdog_thread_runs_periodically_until_stopped(monkeypatch):
    reaped = threading.Semaphore(0)
    monkeypatch.setattr(watchdog, "autopilot_reap", lambda: reaped.release() or [])

    thread = WatchdogThread(every=0.01)
    thread.start()
    for _ in range(3):
        assert reaped.acquire(timeout=5)
    thread.stop()

    assert not thread.is_alive()
