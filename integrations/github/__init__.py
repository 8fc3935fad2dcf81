"""GitHub integration: see `client` for the functions, `faults` for errors and retries."""

from integrations.github.client import (
    DEFAULT_API_URL,
    Branch,
    Commit,
    PullRequest,
    RepositoryContext,
    github_branch_commits,
    github_branch_create,
    github_change_set_commit,
    github_files_read,
    github_pull_request_find,
    github_pull_request_open,
    github_repository_context,
)
from integrations.github.faults import CallPolicy, GitHubError

__all__ = [
    "DEFAULT_API_URL",
    "Branch",
    "CallPolicy",
    "Commit",
    "GitHubError",
    "PullRequest",
    "RepositoryContext",
    "github_branch_commits",
    "github_branch_create",
    "github_change_set_commit",
    "github_files_read",
    "github_pull_request_find",
    "github_pull_request_open",
    "github_repository_context",
]
