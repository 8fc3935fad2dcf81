"""Plain git (no GitHub API): push a change set to a remote, render it as a patch."""

from integrations.git.patch import git_change_set_patch
from integrations.git.workspace import GitWorkspaceError, PushResult, git_change_set_push

__all__ = ["GitWorkspaceError", "PushResult", "git_change_set_patch", "git_change_set_push"]
