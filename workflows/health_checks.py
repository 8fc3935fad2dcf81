"""Health checks contributed by layers above the core to `GET /api/health/`.

The core knows nothing of the autopilot, yet health must report its runs. A layer above
registers a check in its `AppConfig.ready()`: a name (the key in the health body), a
function that returns the check's details (it may set `"ok": False` to make health
answer 503 "degraded"; an exception is reported as `{"ok": false, "error": ...}`) and
the DRF serializer that documents those details in the OpenAPI document.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HealthCheck:
    name: str
    run: Callable[[], dict[str, Any]]
    serializer: type


_checks: dict[str, HealthCheck] = {}


def health_check_register(
    *, name: str, run: Callable[[], dict[str, Any]], serializer: type
) -> None:
    """Report `run()` under `name` in every health answer from now on (again: replaced)."""
    _checks[name] = HealthCheck(name=name, run=run, serializer=serializer)


def health_check_unregister(name: str) -> None:
    """Stop reporting the check `name` (a no-op if it is not registered)."""
    _checks.pop(name, None)


def health_checks() -> tuple[HealthCheck, ...]:
    """The registered checks, in registration order."""
    return tuple(_checks.values())
