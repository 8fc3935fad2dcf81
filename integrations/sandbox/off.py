"""The off backend: the sandbox is switched off, so no command runs anywhere."""

from collections.abc import Callable

from integrations.sandbox.base import (
    SandboxBackend,
    SandboxRequest,
    SandboxResult,
    SandboxUnavailable,
)

__all__ = ["OffBackend"]

OFF_MESSAGE = "the sandbox is off: nothing runs; set TOPDOG_SANDBOX to bubblewrap or subprocess"


class OffBackend(SandboxBackend):
    """Refuses every run, so a deployment without a sandbox never executes generated code."""

    name = "off"
    isolated = False

    def __repr__(self) -> str:
        return "OffBackend()"

    def available(self) -> tuple[bool, str]:
        """Never available."""
        return False, "sandbox is off"

    def run(
        self,
        request: SandboxRequest,
        *,
        on_output: Callable[[str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SandboxResult:
        """Always raises SandboxUnavailable."""
        raise SandboxUnavailable(OFF_MESSAGE)
