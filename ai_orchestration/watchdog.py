"""The watchdog: what `manage.py autopilot_watchdog` (and `serve`'s in-process one) do.

Every tick it records its beat, fails the task rows of dead task workers (see
workflows/workers.py), re-queues autopilot runs whose lease expired (`autopilot_reap`)
and queued runs whose task was lost (`autopilot_orphans_requeue`), and prunes old
beats. A tick that fails (the database or Redis is away) is logged and the loop goes on
after a pause (`Backoff`); it never ends on an error. The beat is written by the loop
itself, not by a thread beside it, so a watchdog whose loop is stuck stops being seen
alive.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import close_old_connections
from django.utils import timezone

from ai_orchestration.autopilot.services import autopilot_orphans_requeue, autopilot_reap
from workflows.models import WorkerBeat
from workflows.supervision import Backoff, connections_drop
from workflows.workers import (
    task_results_of_dead_workers_fail,
    worker_beat_record,
    worker_beat_stop,
    worker_beats_prune,
    worker_id_new,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchdogReport:
    """What one tick did: runs re-queued, task rows failed."""

    requeued: list[Any] = field(default_factory=list)
    failed_tasks: list[str] = field(default_factory=list)


def watchdog_tick(*, worker_id: str, started_at: datetime) -> WatchdogReport:
    """One round of the watchdog (see the module's docstring)."""
    worker_beat_record(kind=WorkerBeat.Kind.WATCHDOG, worker_id=worker_id, started_at=started_at)
    failed = task_results_of_dead_workers_fail()
    requeued = autopilot_reap() + autopilot_orphans_requeue()
    worker_beats_prune()
    return WatchdogReport(requeued=requeued, failed_tasks=failed)


class Watchdog:
    """The watchdog's loop: a tick every `every` seconds until `stop()`."""

    def __init__(
        self,
        *,
        every: float,
        backoff: Backoff | None = None,
        on_report: Callable[[WatchdogReport], None] | None = None,
        tick: Callable[..., WatchdogReport] | None = None,
    ) -> None:
        self.every = every
        self.backoff = backoff or Backoff.from_settings()
        self.on_report = on_report or (lambda report: None)
        self.tick = tick or watchdog_tick
        self.worker_id = worker_id_new(prefix=WorkerBeat.Kind.WATCHDOG)
        self.started_at = timezone.now()
        self.ticks = self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        """Tick until stopped; then record the stop (if the database lets it)."""
        try:
            while not self.stopping.is_set():
                if self.stopping.wait(self.run_once()):
                    break
        finally:
            try:
                worker_beat_stop(worker_id=self.worker_id)
            except Exception:
                logger.warning("watchdog %s: cannot record its stop", self.worker_id)
            connections_drop()

    def run_once(self) -> float:
        """One tick; the seconds to wait before the next."""
        close_old_connections()
        try:
            self.on_report(self.tick(worker_id=self.worker_id, started_at=self.started_at))
        except Exception as exc:
            self.failures += 1
            pause = self.backoff.delay()
            logger.warning(
                "watchdog %s: tick failed (%s: %s); next in %.2f s",
                self.worker_id,
                type(exc).__name__,
                exc,
                pause,
                exc_info=exc,
            )
            connections_drop()
            return pause
        self.ticks += 1
        self.backoff.reset()
        return self.every

    def stop(self) -> None:
        self.stopping.set()


class WatchdogThread(threading.Thread):
    """A `Watchdog` on a thread of its own (beside serve's in-process task worker)."""

    def __init__(self, *, every: float, **kwargs: Any) -> None:
        super().__init__(name="autopilot-watchdog", daemon=True)
        self.watchdog = Watchdog(every=every, **kwargs)

    def run(self) -> None:
        self.watchdog.run()

    def stop(self, timeout: float = 10.0) -> None:
        self.watchdog.stop()
        if self.is_alive():
            self.join(timeout)
