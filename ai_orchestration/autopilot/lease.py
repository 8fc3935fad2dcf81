"""The lease a worker holds on a run or a work item while it works it, the heartbeat
thread that renews it, and the cancel check of the worker's calls.

Each claim issues a new lease token (a UUID on the row); every write the holder makes
as the holder (completing the phase or the item, finishing or re-queueing the run) is
made only while the row still carries that token, checked under the row lock in the
write's own transaction. A worker that lost its lease is thereby fenced off: whatever
it still tries is refused, never applied.

The heartbeat renews the lease every TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS on its own
thread and its own database connection, and reads whether a cancel was asked for. A
renewal that fails (a dropped connection, a database restart) is logged and retried on
a fresh connection with a short backoff. The lease is *lost* when

- the row shows it was taken over (another token, or no longer running), or
- renewals kept failing until less than one heartbeat interval of it is left.

The second rule is a margin: a holder gives up one interval before its lease expires
in the database, so its model call (cut within that interval, `providers/cancel.py`)
is over before the reaper can give the work to another worker. `should_stop()` answers
from memory, so the providers' cancel watcher may call it from any thread; the time
rule is evaluated there too, so a heartbeat stuck in a database call cannot keep the
work going past its lease.
"""

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from ai_orchestration.models import AIRun
from workflows.models import WorkItem
from workflows.work_items import work_item_renew

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often the worker's own thread asks the database whether to stop (between chunks).
CHECK_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.05


def _retry_pause(failures: int, cap: float) -> float:
    """The pause after the `failures`-th failed try in a row: doubling from
    FIRST_RETRY_SECONDS, at most `cap` (one heartbeat interval)."""
    return min(cap, FIRST_RETRY_SECONDS * 2 ** (failures - 1))


class Hold(enum.Enum):
    """What a renewal or a check found."""

    HELD = "held"  # still ours
    STOP = "stop"  # still ours, but the work should stop (a cancel was asked for)
    TAKEN = "taken"  # not ours any more: another token, or no longer running


class LeaseHeartbeat(threading.Thread):
    """Holds one lease while a worker works: renews it, notices a cancel, and loss.

    `renew()` extends the lease in the database and says whether it is still held (and
    whether to stop). It may raise: a failed renewal is retried until the lease would
    expire, never fatal to the thread.
    """

    def __init__(
        self,
        *,
        name: str,
        token: uuid.UUID,
        renew: Callable[[], "Hold"],
        held_since: float | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{name}")
        self.label = name
        self.token = token
        self._renew = renew
        self.interval = float(settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS)
        self.lease_seconds = float(settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)
        # Give up this long before the lease expires (see the module's docstring).
        self.margin = min(self.interval, self.lease_seconds / 2)
        # When the lease expires at the latest, by this process's monotonic clock: the
        # start of the claim or renewal that set it, plus the lease.
        self._held_until = (held_since or time.monotonic()) + self.lease_seconds
        self._taken = False
        self._cancelled = False
        self._stopped = threading.Event()
        self.last_error = ""

    # --- what the worker asks (any thread, no database) ----------------------------------

    @property
    def lost(self) -> bool:
        """The lease is not (or may no longer be) ours: stop, and write nothing as holder."""
        return self._taken or time.monotonic() >= self._held_until - self.margin

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def should_stop(self) -> bool:
        """The lease is lost, or the heartbeat read a cancel request."""
        return self._cancelled or self.lost

    # --- the thread ----------------------------------------------------------------------

    def __enter__(self) -> "LeaseHeartbeat":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        try:
            self._beat()
        except BaseException:  # never silently: a dead heartbeat gives the lease up
            logger.exception("heartbeat of %s died; giving its lease up", self.label)
            self._taken = True
        finally:
            try:
                connection.close()
            except Exception:
                logger.exception("heartbeat of %s: closing its connection failed", self.label)

    def _beat(self) -> None:
        next_renewal = time.monotonic() + self.interval
        failures = 0
        while True:
            wake = min(next_renewal, self._held_until - self.margin)
            if self._stopped.wait(max(0.0, wake - time.monotonic())):
                return
            if self.lost:
                break
            if time.monotonic() < next_renewal:
                continue
            started = time.monotonic()
            try:
                verdict = self._renew()
            except Exception as exc:
                failures += 1
                self._failed(exc, failures)
                next_renewal = time.monotonic() + _retry_pause(failures, self.interval)
                continue
            if failures:
                logger.info(
                    "heartbeat of %s: renewed again after %d failures", self.label, failures
                )
            failures = 0
            next_renewal = started + self.interval
            if verdict is Hold.TAKEN:
                self._taken = True
                break
            self._held_until = started + self.lease_seconds
            if verdict is Hold.STOP and not self._cancelled:
                self._cancelled = True
                logger.info("%s: a cancel was asked for; stopping the work", self.label)
        self._report_loss()

    def _failed(self, exc: Exception, failures: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".strip()[:300]
        logger.warning(
            "heartbeat of %s: renewing the lease failed (%d in a row; %.1fs of it left): %s",
            self.label,
            failures,
            self._held_until - time.monotonic(),
            self.last_error,
        )
        try:
            # The next try takes a fresh connection (a pooled one goes back and, broken,
            # is discarded).
            connection.close()
        except Exception:
            logger.exception("heartbeat of %s: closing a broken connection failed", self.label)

    def _report_loss(self) -> None:
        if self._taken:
            logger.warning("%s: the lease was taken over; stopping the work", self.label)
        else:
            logger.error(
                "%s: the lease could not be renewed before it expires (last error: %s); "
                "stopping the work, which another worker may now take",
                self.label,
                self.last_error or "none",
            )


class StopCheck:
    """`should_cancel` for a worker's calls: its lease is lost or cancelled (from memory,
    on any thread), or, asked on the worker's own thread every CHECK_SECONDS, `query()`
    says to stop (a cancel request). The providers' cancel watcher calls it from its own
    thread and gets the last answer, never a query."""

    def __init__(self, lease: LeaseHeartbeat, query: Callable[[], bool]) -> None:
        self.lease = lease
        self.query = query
        self.thread = threading.get_ident()
        self.checked = 0.0
        self.cancelled = False

    def __call__(self) -> bool:
        if self.lease.should_stop():
            return True
        if self.cancelled or threading.get_ident() != self.thread:
            return self.cancelled
        now = time.monotonic()
        if now - self.checked >= CHECK_SECONDS:
            self.checked = now
            try:
                self.cancelled = self.query()
            except DatabaseError as exc:  # the heartbeat decides about the lease
                logger.warning("%s: the cancel check failed: %s", self.lease.label, exc)
                if not connection.in_atomic_block:
                    connection.close()
        return self.cancelled


def holder_write(
    lease: LeaseHeartbeat,
    write: Callable[[], T],
    *,
    what: str,
    landed: Callable[[], T | None] | None = None,
) -> T:
    """`write()`, a transaction the lease holder makes with the work's result, made on a
    fresh connection again when the database connection fails under it (dropped, the
    server restarted), after a short pause, for as long as the lease is held.

    The worker's own connection is held for the whole step, so the model call's answer
    would otherwise meet a connection that died while it waited, and be lost: another
    worker would call the model again for the same attempt. A transaction that failed
    wrote nothing, unless the connection failed at its COMMIT: `landed()` then says
    whether it committed (its result), so the write is never made twice. Once the lease
    is lost, the last error is raised (the work is left to the lease, as before).
    """
    failures = 0
    while True:
        try:
            if failures and landed is not None:
                result = landed()
                if result is not None:
                    return result
            return write()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or lease.lost:
                raise  # an outer transaction is broken, or the work is no longer ours
            failures += 1
            logger.warning(
                "%s: the database failed while %s (%d in a row); trying again on a fresh "
                "connection: %s",
                lease.label,
                what,
                failures,
                exc,
            )
            try:
                connection.close()  # a broken pooled connection is discarded
            except DatabaseError:
                logger.exception("%s: closing a broken connection failed", lease.label)
            time.sleep(_retry_pause(failures, lease.interval))


# --- the two kinds of lease ---------------------------------------------------------------


def run_lease(*, run_id: Any, token: uuid.UUID, held_since: float) -> LeaseHeartbeat:
    """The heartbeat of a run's step (claimed with `token`)."""

    def renew() -> Hold:
        now = timezone.now()
        mine = AIRun.objects.filter(pk=run_id, lease_token=token, status=AIRun.Status.RUNNING)
        renewed = mine.update(
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS),
        )
        if not renewed:
            return Hold.TAKEN
        return Hold.STOP if mine.filter(cancel_requested=True).exists() else Hold.HELD

    return LeaseHeartbeat(name=f"run {run_id}", token=token, renew=renew, held_since=held_since)


def run_stop_check(*, run_id: Any, lease: LeaseHeartbeat) -> StopCheck:
    """A run's calls stop when its lease is lost or the run is cancelled."""
    return StopCheck(lease, lambda: AIRun.objects.filter(pk=run_id, cancel_requested=True).exists())


def work_item_lease(
    *, run_id: Any, item_id: Any, token: uuid.UUID, held_since: float
) -> LeaseHeartbeat:
    """The heartbeat of a worker's work item (taken with `token`) for run `run_id`."""

    def renew() -> Hold:
        renewed = work_item_renew(
            item_id=item_id,
            lease_token=token,
            lease_seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS,
        )
        if not renewed:
            return Hold.TAKEN
        return Hold.HELD if _run_goes_on(run_id) else Hold.STOP

    return LeaseHeartbeat(
        name=f"work item {item_id}", token=token, renew=renew, held_since=held_since
    )


def work_item_stop_check(*, run_id: Any, item_id: Any, lease: LeaseHeartbeat) -> StopCheck:
    """An item's calls stop when its lease is lost, it is no longer this worker's
    (cancelled, reaped, superseded, completed elsewhere), or its run ended or was
    cancelled."""

    def stop() -> bool:
        mine = WorkItem.objects.filter(
            pk=item_id, status=WorkItem.Status.RUNNING, lease_token=lease.token
        ).exists()
        return not mine or not _run_goes_on(run_id)

    return StopCheck(lease, stop)


def _run_goes_on(run_id: Any) -> bool:
    return AIRun.objects.filter(pk=run_id, status__in=AIRun.ACTIVE, cancel_requested=False).exists()
