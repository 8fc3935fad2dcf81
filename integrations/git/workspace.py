"""Pushing a change set to a plain git remote (no GitHub API), and patches.

`git_change_set_push` shallow-clones into a throw-away workspace, applies the change
set, commits once and pushes. It is idempotent: when the remote branch already holds
the change set (a retry after success) nothing is committed or pushed.

Every git command runs with an explicit environment: no user or system config
(`GIT_CONFIG_GLOBAL=/dev/null`, `GIT_CONFIG_NOSYSTEM=1`), no prompts
(`GIT_TERMINAL_PROMPT=0`), only the transports the remote needs (`GIT_ALLOW_PROTOCOL`),
no hooks, and a timeout. A token never appears in argv or in the remote URL: it travels
as an `http.<remote>.extraHeader` set through `GIT_CONFIG_*` variables, and is
scrubbed from every message.
"""

import base64
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from integrations.change_set import FileChange, UnsafeChangeSet, change_set_normalize
from integrations.git.patch import git_change_set_patch
from integrations.repository import git_branch_name_check, git_remote_url_check
from integrations.secrets import SecretToken, secret_scrub, secret_token

__all__ = [
    "GitWorkspaceError",
    "PushResult",
    "git_change_set_patch",
    "git_change_set_push",
]

logger = logging.getLogger("integrations.git")

DEFAULT_ALLOWED_HOSTS = frozenset({"github.com"})
DEFAULT_TIMEOUT_SECONDS = 120.0
STDERR_TAIL_CHARS = 600


class GitWorkspaceError(RuntimeError):
    """A git operation that failed. `kind`: not_found, rejected, timeout, failed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"GitWorkspaceError(kind={self.kind!r}, message={self.message!r})"

    def __reduce__(self):  # picklable, for task queues that store the failure
        return (self.__class__, (self.kind, self.message))


@dataclass(frozen=True)
class PushResult:
    branch: str
    commit_sha: str
    pushed: bool


class _Git:
    """Runs git in one workspace with a fixed, credential-free argv."""

    def __init__(
        self,
        *,
        cwd: Path,
        remote_url: str,
        token: SecretToken | None,
        author: tuple[str, str],
        local: bool,
        timeout: float,
    ):
        self.cwd = cwd
        self.token = token
        self.timeout = timeout
        name, email = author
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cwd),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ALLOW_PROTOCOL": "https:file" if local else "https",
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        if token is not None:
            basic = base64.b64encode(f"x-access-token:{token.value}".encode()).decode()
            self.env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": f"http.{remote_url}.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
                }
            )

    def __repr__(self) -> str:
        return f"_Git(cwd={str(self.cwd)!r})"

    def run(
        self,
        *args: str,
        what: str,
        cwd: Path | None = None,
        stdin: str | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> subprocess.CompletedProcess:
        argv = [
            "git",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.autocrlf=false",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "transfer.fsckObjects=true",
            *args,
        ]
        try:
            done = subprocess.run(
                argv,
                cwd=cwd or self.cwd,
                env=self.env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GitWorkspaceError(
                "timeout", f"git {what} took longer than {self.timeout:.0f} s: check the remote"
            ) from None
        if done.returncode not in ok_codes:
            tail = secret_scrub(done.stderr.strip()[-STDERR_TAIL_CHARS:], [self.token])
            raise GitWorkspaceError("failed", f"git {what} failed: {tail or 'no message'}")
        return done


def _remote_heads(git: _Git, remote: str, branches: Iterable[str]) -> dict[str, str]:
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


def _apply(root: Path, changes: tuple[FileChange, ...]) -> list[str]:
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
        git = _Git(
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
        touched = _apply(checkout, changes)
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
