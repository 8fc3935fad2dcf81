"""The subprocess backend: the same limits and environment, no isolation at all.

For development machines without bubblewrap. The command runs as TopDog's own user with
`cwd` the worktree; it can read and write whatever that user can, and reach the network.
/workspace, /deps and /artifacts do not exist here, so HOME and TOPDOG_ARTIFACTS /
TOPDOG_DEPS (and the deps entries of PATH) name the real host directories instead.
The kernel does not apply the process cap to root, so as root the process group is
counted every 0.1 s and killed above the cap; a command that leaves its process group
(setsid) escapes that count and the final kill. Every result says isolated=False.
"""

import os
from collections.abc import Callable
from pathlib import Path

from integrations.sandbox.base import (
    ERROR,
    ProcessSpec,
    SandboxBackend,
    SandboxRequest,
    SandboxResult,
    process_run,
    rlimit_argv,
    sandbox_environment,
)

__all__ = ["SubprocessBackend"]


class SubprocessBackend(SandboxBackend):
    """Unisolated runs: `/bin/sh -c COMMAND` in the worktree, under the shared limits."""

    name = "subprocess"
    isolated = False

    def __repr__(self) -> str:
        return "SubprocessBackend()"

    def available(self) -> tuple[bool, str]:
        """Always runs where /bin/sh and prlimit exist."""
        for tool in ("/bin/sh", "/usr/bin/prlimit"):
            if not os.access(tool, os.X_OK):
                return False, f"{tool} is missing"
        return True, ""

    def run(
        self,
        request: SandboxRequest,
        *,
        on_output: Callable[[str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SandboxResult:
        """Run the command directly on the host, in the worktree."""
        worktree = Path(request.worktree).resolve()
        if not worktree.is_dir():
            reason = f"worktree {request.worktree} is not a directory"
            return SandboxResult(ERROR, None, 0, "", False, "", self.name, False, reason)
        deps = Path(request.deps_dir).resolve() if request.deps_dir is not None else None
        artifacts = (
            Path(request.artifacts_dir).resolve() if request.artifacts_dir is not None else None
        )
        env = sandbox_environment(
            extra=request.env,
            home=str(worktree),
            deps=str(deps) if deps is not None else "/nonexistent/deps",
            artifacts=str(artifacts) if artifacts is not None else "/nonexistent/artifacts",
        )
        watch = [worktree]
        if artifacts is not None:
            watch.append(artifacts)
        if deps is not None and request.deps_writable:
            watch.append(deps)
        spec = ProcessSpec(
            argv=(*rlimit_argv(request.limits), "/bin/sh", "-c", request.command),
            env=env,
            cwd=worktree,
            watch=tuple(watch),
            count_processes=os.geteuid() == 0,
        )
        return process_run(
            spec,
            request,
            backend=self.name,
            isolated=False,
            on_output=on_output,
            should_cancel=should_cancel,
        )
