"""Pushing a change set to a plain git remote (no GitHub API), and patches.

`git_change_set_push` shallow-clones into a throw-away workspace, applies the change
set, commits once and pushes. It is idempotent: when the remote branch already holds
the change set (a retry after success) nothing is committed or pushed.

Git runs through `integrations.git.runner.GitRunner`: a clean environment, no hooks,
a timeout, and a token only in `GIT_CONFIG_*` variables, scrubbed from every message.
`change_set_write` writes a change set into a checkout; `integrations.workspace` uses
it too.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from integrations.change_set import FileChange, UnsafeChangeSet, change_set_normalize
from integrations.git.patch import git_change_set_patch
from integrations.git.runner import GitRunner, GitWorkspaceError
from integrations.repository import git_branch_name_check, git_remote_url_check
from integrations.secrets import SecretToken, secret_token

__all__ = [
    "GitWorkspaceError",
    "PushResult",
    "change_set_write",
    "git_change_set_patch",
    "git_change_set_push",
]

logger = logging.getLogger("integrations.git")

DEFAULT_ALLOWED_HOSTS = frozenset({"github.com"})
DEFAULT_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class PushResult:
    branch: str
    commit_sha: str
    pushed: bool


def _remote_heads(git: GitRunner, remote: str, branches: Iterable[str]) -> dict[str, str]:
    """{branch: sha} of the given branches that exist on the remote."""
    refs = [f"refs/heads/{b}" for b in branches]
    out = git.run("ls-remote", "--heads", "--", remote, *refs, what="ls-remote").stdout
    heads = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def _inside(root: Path, target: Path) -> bool:
    try:
        target.relative_to(root)
    except ValueError:
        return False
    return True


def change_set_write(root: Path, changes: Iterable[FileChange]) -> list[str]:
    """Write the change set into the checkout at `root`; the paths git must stage.
    Refuses any path whose parent resolves outside `root` (a symlinked directory in
    the repository), and replaces a symlink at the path itself with a regular file."""
    root = root.resolve()
    touched = []
    for change in changes:
        target = root / change.path
        parent = target.parent.resolve()
        if not _inside(root, parent) or _inside(root / ".git", parent):
            raise UnsafeChangeSet(f"file path {change.path!r} leaves the repository")
        if target.is_dir() and not target.is_symlink():
            raise UnsafeChangeSet(f"{change.path} is a directory on the branch; list its files")
        if change.action == "delete":
            if target.is_symlink() or target.exists():
                target.unlink()
                touched.append(change.path)
            continue
        # A file where a directory must go (or a symlink) cannot hold children.
        for ancestor in reversed(target.relative_to(root).parents[:-1]):
            node = root / ancestor
            if node.is_symlink() or (node.exists() and not node.is_dir()):
                raise UnsafeChangeSet(
                    f"{ancestor} is a file or symlink on the branch, not a directory"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(change.data)
        touched.append(change.path)
    return touched


def git_change_set_push(
    *,
    remote_url: str,
    base_branch: str,
    branch: str,
    message: str,
    files: Iterable[Mapping | FileChange],
    author_name: str,
    author_email: str,
    workdir: str | os.PathLike | None = None,
    token: "str | SecretToken | None" = None,
    allowed_hosts: Collection[str] = DEFAULT_ALLOWED_HOSTS,
    allow_local_paths: bool = False,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> PushResult:
    """Commit `files` on `branch` (started from `base_branch` when it does not exist yet)
    and push it to `remote_url`. `pushed` is False when the remote branch already held
    the change set, so nothing was committed. A change set that changes nothing on a new
    branch pushes the branch at the base commit. Deleting a missing file is a no-op.
    Remotes are checked with `git_remote_url_check` (`allowed_hosts`, and `file://` only
    with `allow_local_paths=True`); `token`, if any, goes to git through the environment."""
    remote = git_remote_url_check(
        remote_url, allowed_hosts=allowed_hosts, allow_local_paths=allow_local_paths
    )
    git_branch_name_check(base_branch)
    git_branch_name_check(branch)
    changes = change_set_normalize(files)
    if not isinstance(message, str) or not message.strip():
        raise ValueError("a commit message is required")
    for label, value in (("author_name", author_name), ("author_email", author_email)):
        if not value or any(ch in value for ch in "<>\n\r\x00"):
            raise ValueError(f"{label} must be non-empty and free of <, > and line breaks")
    secret = secret_token(token) if token is not None else None
    workspace = Path(tempfile.mkdtemp(prefix="topdog-git-", dir=workdir))
    try:
        git = GitRunner(
            cwd=workspace,
            remote_url=remote,
            token=secret,
            author=(author_name, author_email),
            local=remote.startswith("file://"),
            timeout=timeout_seconds,
        )
        heads = _remote_heads(git, remote, [branch, base_branch])
        start = branch if branch in heads else base_branch
        if start not in heads:
            raise GitWorkspaceError(
                "not_found",
                f"base branch {base_branch} does not exist on the remote: push it first or "
                "name an existing branch",
            )
        checkout = workspace / "checkout"
        git.run(
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--single-branch",
            "--no-tags",
            "--template=",
            "--branch",
            start,
            "--",
            remote,
            str(checkout),
            what=f"clone of {start}",
        )
        git.cwd = checkout
        if start != branch:
            git.run("checkout", "--quiet", "-b", branch, what=f"checkout -b {branch}")
        touched = change_set_write(checkout, changes)
        if touched:
            git.run(
                "add",
                "--all",
                "--force",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
                stdin="\x00".join(touched) + "\x00",
                what="add",
            )
        staged = git.run("diff", "--cached", "--quiet", what="diff", ok_codes=(0, 1))
        if staged.returncode == 0:
            head = git.run("rev-parse", "HEAD", what="rev-parse").stdout.strip()
            if start == branch:
                logger.info("change set already on %s; nothing pushed", branch)
                return PushResult(branch=branch, commit_sha=head, pushed=False)
            # The change set changes nothing on the base: the branch starts at the base.
        else:
            git.run("commit", "--quiet", "--no-verify", "-F", "-", stdin=message, what="commit")
            head = git.run("rev-parse", "HEAD", what="rev-parse").stdout.strip()
        try:
            git.run(
                "push", "--quiet", "--", remote, f"HEAD:refs/heads/{branch}", what=f"push {branch}"
            )
        except GitWorkspaceError as exc:
            if exc.kind == "failed" and ("rejected" in exc.message or "non-fast" in exc.message):
                raise GitWorkspaceError(
                    "rejected",
                    f"the remote rejected the push to {branch}: it moved while the change set "
                    "was being applied; run it again",
                ) from None
            raise
        logger.info("pushed %s to %s", head[:12], branch)
        return PushResult(branch=branch, commit_sha=head, pushed=True)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
