"""Live frames of the autopilot on the workflow's websocket: run summaries and deltas.

Neither kind is persisted (no seq). A frame that reports a committed fact, a run's
status, is sent after commit (`run_frame_send` schedules it with
`transaction.on_commit`, so a change that rolls back is never announced; outside a
transaction it goes at once). Token deltas report nothing committed and go as they come.
"""

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from django.db import transaction

from ai_orchestration.autopilot.serializers import RunOutputSerializer
from ai_orchestration.models import AIRun
from workflows.broadcast import workflow_live_frame_send


def run_summary(run: AIRun) -> dict:
    """The run as the API, the MCP tools and the `ai.run` frame show it."""
    return dict(RunOutputSerializer(run).data)


def run_frame_send(run: AIRun) -> None:
    """Tell the workflow's websocket about the run as it is now, once that commits."""
    frame = {"type": "ai.run", "workflow_id": str(run.workflow_id), "run": run_summary(run)}
    transaction.on_commit(
        partial(workflow_live_frame_send, workflow_id=run.workflow_id, frame=frame), robust=True
    )


class DeltaBroadcaster:
    """Streams token deltas to the workflow's websocket, batched to ~10 frames a second;
    `on_frame` (an in-process observer: the CLI) gets each frame too."""

    INTERVAL = 0.1

    def __init__(
        self,
        *,
        workflow_id: Any,
        run_id: Any,
        phase: str,
        role: str,
        on_frame: Callable[[dict], None] | None = None,
    ) -> None:
        self.base = {
            "type": "ai.delta",
            "workflow_id": str(workflow_id),
            "run_id": str(run_id),
            "phase": phase,
            "role": role,
        }
        self.buffer: list[str] = []
        self.attempt = 1
        self.last_flush = time.monotonic()
        self.total_chars = 0
        self.on_frame = on_frame

    def __call__(self, chunk: str, attempt: int) -> None:
        if attempt != self.attempt:
            self.flush()
            self.attempt = attempt
        self.buffer.append(chunk)
        self.total_chars += len(chunk)
        if time.monotonic() - self.last_flush >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            frame = {**self.base, "attempt": self.attempt, "delta": "".join(self.buffer)}
            workflow_live_frame_send(workflow_id=self.base["workflow_id"], frame=frame)
            if self.on_frame is not None:
                self.on_frame(frame)
            self.buffer = []
        self.last_flush = time.monotonic()
