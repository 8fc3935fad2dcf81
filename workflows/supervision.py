"""Loops that outlive the database and Redis: the supervised task worker and its beat.

django-tasks-db's `db_worker` leaves its loop (and the process) on any database error
but a locked SQLite file. `SupervisedWorker` runs the real `db_worker` (through
`call_command`) on the main thread and, when it raises, logs the error, pauses
(`Backoff`) and runs it again, forever; SIGINT and SIGTERM still stop it as db_worker's
own handlers do (the first lets a running task finish, a second stops it at once). A
`BeatThread` beside it records the worker's beat (workflows/workers.py) under the id it
gives db_worker, whatever the database is doing.
"""

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import close_old_connections, connections
from django.utils import timezone

from workflows.models import WorkerBeat
from workflows.workers import (
    task_results_of_worker_fail,
    worker_beat_record,
    worker_beat_stop,
    worker_id_new,
)

logger = logging.getLogger(__name__)

# The signals db_worker takes over while it runs.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)
)


class Backoff:
    """Pauses before a failed loop runs again: `initial` seconds doubling up to `cap`, each
    a random time between half and all of it (so workers that failed together do not
    come back together); back to `initial` after a run that lasted `healthy_after`."""

    def __init__(
        self,
        *,
        initial: float,
        cap: float,
        healthy_after: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.healthy_after = healthy_after
        self._rng = rng
        self._next = initial

    @classmethod
    def from_settings(
        cls, *, initial_ms: int | None = None, cap_ms: int | None = None
    ) -> "Backoff":
        """TOPDOG_WORKER_BACKOFF_MS, TOPDOG_WORKER_BACKOFF_MAX_MS and
        TOPDOG_WORKER_HEALTHY_SECONDS, unless given."""
        initial_ms = settings.TOPDOG_WORKER_BACKOFF_MS if initial_ms is None else initial_ms
        cap_ms = settings.TOPDOG_WORKER_BACKOFF_MAX_MS if cap_ms is None else cap_ms
        return cls(
            initial=initial_ms / 1000,
            cap=cap_ms / 1000,
            healthy_after=settings.TOPDOG_WORKER_HEALTHY_SECONDS,
        )

    def delay(self, *, ran_for: float = 0.0) -> float:
        """The pause after a run that failed after `ran_for` seconds."""
        if ran_for >= self.healthy_after:
            self.reset()
        base = min(self._next, self.cap)
        self._next = min(base * 2, self.cap)
        return base / 2 + self._rng() * base / 2

    def reset(self) -> None:
        self._next = self.initial


def connections_drop() -> None:
    """Give back this thread's database connections (a broken one is discarded)."""
    for conn in connections.all(initialized_only=True):
        with suppress(Exception):
            conn.close()


def supervise(
    run: Callable[[], None],
    *,
    name: str,
    backoff: Backoff,
    stopping: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call `run` until it returns or `stopping` is set; when it raises (a database or
    Redis error, or anything else but a CommandError), log it, pause and call it again."""
    while not stopping.is_set():
        started = clock()
        try:
            run()
            return
        except CommandError:
            raise
        except Exception as exc:
            ran_for = clock() - started
            pause = backoff.delay(ran_for=ran_for)
            logger.warning(
                "%s failed after %.1f s (%s: %s); running it again in %.2f s",
                name,
                ran_for,
                type(exc).__name__,
                exc,
                pause,
                exc_info=exc,
            )
            connections_drop()
            if stopping.wait(pause):
                return


class BeatThread(threading.Thread):
    """Records `worker_id`'s beat every `every` seconds until stopped, then its stop.
    A beat that cannot be written is logged (once per outage) and tried again."""

    def __init__(self, *, kind: str, worker_id: str, every: float) -> None:
        super().__init__(name=f"beat-{worker_id}", daemon=True)
        self.kind = kind
        self.worker_id = worker_id
        self.every = every
        self.started_at = timezone.now()
        self.beats = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        failing = False
        while True:
            try:
                worker_beat_record(
                    kind=self.kind, worker_id=self.worker_id, started_at=self.started_at
                )
                self.beats += 1
                if failing:
                    logger.info("%s %s: beats recorded again", self.kind, self.worker_id)
                failing = False
            except Exception:
                if not failing:
                    logger.warning(
                        "%s %s: cannot record its beat", self.kind, self.worker_id, exc_info=True
                    )
                failing = True
            connections_drop()
            if self._stopping.wait(self.every):
                break
        try:
            worker_beat_stop(worker_id=self.worker_id)
        except Exception:
            logger.warning("%s %s: cannot record its stop", self.kind, self.worker_id)
        connections_drop()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)


class SupervisedWorker:
    """`db_worker` on this thread (the main one: it installs signal handlers), run again
    after an error, with its beat recorded beside it under the same worker id."""

    def __init__(
        self,
        *,
        options: Sequence[str] = (),
        worker_id: str | None = None,
        backoff: Backoff | None = None,
        beat_seconds: float | None = None,
        verbosity: int = 1,
        command: str = "db_worker",
    ) -> None:
        self.options = list(options)
        self.worker_id = worker_id or worker_id_new(prefix=WorkerBeat.Kind.WORKER)
        self.backoff = backoff or Backoff.from_settings()
        self.beat_seconds = beat_seconds or settings.TOPDOG_WORKER_BEAT_SECONDS
        self.verbosity = verbosity
        self.command = command
        self.stopping = threading.Event()

    def run(self) -> None:
        """Until SIGINT/SIGTERM (or db_worker returns: --batch); the handlers found are
        put back afterwards."""
        saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        beat = BeatThread(
            kind=WorkerBeat.Kind.WORKER, worker_id=self.worker_id, every=self.beat_seconds
        )
        beat.start()
        try:
            self._handle_signals()
            supervise(
                self._once,
                name=f"task worker {self.worker_id}",
                backoff=self.backoff,
                stopping=self.stopping,
            )
        except SystemExit as exc:  # a signal while db_worker was not running
            if exc.code not in (None, 0):
                raise
        finally:
            beat.stop()
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _once(self) -> None:
        try:
            close_old_connections()
            # No task of ours runs now: a row still RUNNING under our id was cut off by
            # the error that stopped db_worker last time.
            task_results_of_worker_fail(
                worker_id=self.worker_id,
                reason=f"task worker {self.worker_id} lost its database connection or "
                "stopped on an error while running it",
            )
            call_command(
                self.command,
                "--no-reload",
                *self.options,
                f"--worker-id={self.worker_id}",
                verbosity=self.verbosity,
            )
        except SystemExit as exc:  # db_worker's way out when a signal stops it idle
            if exc.code not in (None, 0):
                raise
        finally:
            # db_worker leaves its handlers behind, bound to a worker that has ended.
            self._handle_signals()
        self.stopping.set()

    def _handle_signals(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop_now)

    def _stop_now(self, signum: int, frame: Any) -> None:
        """Between runs of db_worker nothing is running: stop at once."""
        self.stopping.set()
        raise SystemExit(0)
