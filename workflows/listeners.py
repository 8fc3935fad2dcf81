"""After-commit listeners: how layers above the core learn that a transition committed.

The core knows nothing of who listens. A layer above (the autopilot) registers a
callable in its `AppConfig.ready()`; the transition runner schedules, inside the
transition's transaction, one `transaction.on_commit` that announces the committed fact
to every listener in registration order. Nothing is announced for a transaction that
rolls back. A listener that raises is logged and the others still run: a committed
transition is never reported as failed because a listener failed.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransitionCommitted:
    """A transition that has committed: `kind` is the Transition asked for."""

    workflow_id: uuid.UUID
    kind: str
    from_state: str
    to_state: str
    awaiting_approval: bool
    actor_name: str


TransitionListener = Callable[[TransitionCommitted], None]

_listeners: list[TransitionListener] = []


def transition_listener_register(listener: TransitionListener) -> TransitionListener:
    """Announce every committed transition to `listener` from now on (once, however
    often it is registered). Returns `listener`, so this works as a decorator."""
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def transition_listener_unregister(listener: TransitionListener) -> None:
    """Stop announcing to `listener` (a no-op if it is not registered)."""
    if listener in _listeners:
        _listeners.remove(listener)


def transition_listeners() -> tuple[TransitionListener, ...]:
    """The registered listeners, in the order they are called."""
    return tuple(_listeners)


def transition_committed_announce(fact: TransitionCommitted) -> None:
    """Call every listener with `fact`; log, never raise, what a listener raises."""
    for listener in tuple(_listeners):
        try:
            listener(fact)
        except Exception:
            logger.exception(
                "transition listener %s failed on %s of workflow %s",
                getattr(listener, "__qualname__", listener),
                fact.kind,
                fact.workflow_id,
            )
