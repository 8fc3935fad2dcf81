"""Domain errors. The API's exception handler maps each to its HTTP status."""


class WorkflowNotFound(Exception):
    """No such workflow, or not one the caller may see (the two are never told apart)."""

    def __init__(self, message: str = "workflow not found") -> None:
        super().__init__(message)


class ProjectNotFound(Exception):
    def __init__(self, message: str = "project not found") -> None:
        super().__init__(message)


class ActionForbidden(Exception):
    """The caller may see the workflow but their project role does not allow the action."""


class TransitionConflict(Exception):
    """The transition is not allowed in the current state, or another request won a race."""

    def __init__(self, message: str, *, current_state: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.current_state = current_state
        self.allowed = allowed


class RepositoryUnavailable(Exception):
    """The project's repository could not be read; the caller may retry or fix its settings."""


class CheckUnavailable(Exception):
    """A check cannot run: the sandbox is off, or there is nothing to check yet."""
