"""Workspaces: a cached bare mirror per repository, and a throw-away tree per use that holds
the base commit's files with a change set applied.

Layout under `root` (the caller passes `$TOPDOG_VAR_DIR/workspaces`):

- `mirrors/<sha256(url)[:16]>.git`: a bare mirror of one repository's branches and tags.
  Created once (`git init --bare` and a first fetch under a temporary name, then renamed,
  so a failed first fetch leaves nothing behind) and only fetched afterwards: when the
  base ref is not in the mirror, or its last fetch (`<mirror>/topdog-fetched`'s mtime) is
  older than `fetch_ttl_seconds`. A full commit id already in the mirror is never
  fetched again. The mirror's mtime is its last use, for LRU eviction.
- `mirrors/<name>.lock`: the mirror's `flock`: shared to read it, exclusive to create,
  fetch or evict it, so processes sharing `root` never see a half-written mirror.
- `trees/<random>/`: one workspace's files, exported from the mirror with
  `git read-tree --reset -u` through a temporary index beside it (removed at once), and
  removed when the workspace closes. The tree has no `.git`: nothing in it points at the
  mirror or can hold a credential. Code that needs a repository can `git init` its copy.

The token reaches git only through `GIT_CONFIG_*` variables (`GitRunner`); the remote URL
is passed on each fetch, so the mirror's config names no remote and holds no secret, and
every error message is scrubbed.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from integrations.change_set import FileChange, UnsafeChangeSet, change_set_normalize
from integrations.git.patch import git_change_set_patch
from integrations.git.runner import GitRunner, GitWorkspaceError
from integrations.git.workspace import change_set_write
from integrations.repository import git_branch_name_check, git_remote_url_check
from integrations.secrets import SecretToken, secret_token

__all__ = [
    "ChangeSetConflict",
    "RepoSource",
    "Workspace",
    "WorkspaceError",
    "base_paths",
    "change_set_apply_check",
    "dependency_files_hash",
    "detect_test_command",
    "mirrors_evict",
    "workspace_open",
]

MIRRORS = "mirrors"
TREES = "trees"
FETCHED_MARK = "topdog-fetched"
MAX_PROBLEMS_IN_MESSAGE = 20
COMMIT_ID_RE = re.compile(r"[0-9a-f]{7,40}")
REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
# Directories never searched for manifests or sources: tool caches and installed packages.
SKIP_DIRS = frozenset(
    {".git", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".mypy_cache", ".nox"}
)
MANIFEST_NAMES = frozenset(
    {
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "Pipfile.lock",
        "poetry.lock",
        "uv.lock",
        "package.json",
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
    }
)
PYTHON_PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini")
NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'


class ChangeSetConflict(ValueError):
    """A change set that does not fit its base. `problems`: [{"path", "message"}], one per
    bad path."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        shown = "; ".join(
            f"{p['path']}: {p['message']}" for p in problems[:MAX_PROBLEMS_IN_MESSAGE]
        )
        more = len(problems) - MAX_PROBLEMS_IN_MESSAGE
        super().__init__(
            "the change set does not apply to the base: "
            + shown
            + (f"; and {more} more" if more > 0 else "")
        )


class WorkspaceError(GitWorkspaceError):
    """A workspace git could not make. `kind`: not_found (the base ref), failed, timeout;
    the message is scrubbed of the token."""


@dataclass(frozen=True)
class RepoSource:
    """Where a workspace's base comes from: an https remote on `allowed_hosts` (or
    `file:///abs/path` with `allow_local`), and the token git sends to it, if any."""

    url: str
    token: SecretToken | None = None
    allow_local: bool = False
    allowed_hosts: frozenset[str] = frozenset({"github.com"})


@dataclass
class Workspace:
    """The base's files with a change set applied, at `path`; removed on `close()` or when
    the `with` block ends. `base_sha` is None for an empty base (no source)."""

    path: Path
    base_sha: str | None
    changes: tuple[FileChange, ...] = field(default=(), repr=False)
    base_files: dict[str, str] = field(default_factory=dict, repr=False)

    def diff(self) -> str:
        """The change set as a unified diff against the base ("" for no changes)."""
        if not self.changes:
            return ""
        return git_change_set_patch(files=self.changes, base_files=self.base_files)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- change sets against a base ------------------------------------------------------------


def _ancestors(path: str) -> Iterator[str]:
    """`a` and `a/b` for `a/b/c`, shortest first."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


def change_set_apply_check(*, changes: Sequence[FileChange], existing: Collection[str]) -> None:
    """Raise ChangeSetConflict naming every path of `changes` that does not fit a base
    holding the files `existing`: a modify or delete of a path not there, a create of a path
    that is, and a write where the base has a directory or under a path that is a file."""
    existing = existing if isinstance(existing, set | frozenset) else set(existing)
    directories = {ancestor for path in existing for ancestor in _ancestors(path)}
    deleted = {c.path for c in changes if c.action == "delete"}
    problems = []
    for change in changes:
        path, action = change.path, change.action
        message = None
        if path in directories:
            message = f"is a directory at the base; {action} its files instead"
        elif action != "create" and path not in existing:
            message = f"{action} of a file that does not exist at the base"
        elif action == "create" and path in existing:
            message = "create of a file that already exists at the base; modify it instead"
        elif action != "delete":
            blocker = next(
                (a for a in _ancestors(path) if a in existing and a not in deleted), None
            )
            if blocker is not None:
                message = f"{blocker} is a file at the base, not a directory"
        if message is not None:
            problems.append({"path": path, "message": message})
    if problems:
        raise ChangeSetConflict(problems)


def _changes(files: Iterable[Mapping | FileChange], max_files: int) -> tuple[FileChange, ...]:
    items = list(files)
    if len(items) > max_files:
        raise UnsafeChangeSet(
            f"the change set has {len(items)} files; at most {max_files} are accepted"
        )
    return change_set_normalize(items) if items else ()


# --- mirrors -------------------------------------------------------------------------------


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _base_ref_check(ref: str) -> str:
    if isinstance(ref, str) and COMMIT_ID_RE.fullmatch(ref):
        return ref
    return git_branch_name_check(ref)


class _Mirror:
    """One repository's bare mirror under `root/mirrors`."""

    def __init__(self, root: Path, source: RepoSource, timeout: float):
        self.url = git_remote_url_check(
            source.url, allowed_hosts=source.allowed_hosts, allow_local_paths=source.allow_local
        )
        mirrors = root / MIRRORS
        mirrors.mkdir(parents=True, exist_ok=True)
        self.name = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.path = mirrors / f"{self.name}.git"
        self.lock = mirrors / f"{self.name}.lock"
        self.git = GitRunner(
            cwd=mirrors,
            remote_url=self.url,
            token=secret_token(source.token) if source.token is not None else None,
            local=self.url.startswith("file://"),
            timeout=timeout,
            error=WorkspaceError,
        )

    def run(self, *args: str, what: str, git_dir: Path | None = None, **kwargs):
        return self.git.run(f"--git-dir={git_dir or self.path}", *args, what=what, **kwargs)

    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names in the mirror: a branch, a tag or a commit id."""
        if not self.path.is_dir():
            return None
        candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        if COMMIT_ID_RE.fullmatch(ref):
            candidates.insert(0, ref)
        out = self.run(
            "cat-file",
            "--batch-check",
            stdin="".join(f"{c}^{{commit}}\n" for c in candidates),
            what="cat-file",
        ).stdout
        for line in out.splitlines():
            sha, _, kind = line.partition(" ")
            if kind.startswith("commit "):
                return sha
        return None

    def fresh(self, ttl: float) -> bool:
        try:
            fetched = (self.path / FETCHED_MARK).stat().st_mtime
        except OSError:
            return False
        return time.time() - fetched <= ttl

    def fetch(self, git_dir: Path, *refspecs: str) -> None:
        self.run(
            "-c",
            "gc.autoDetach=false",
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--",
            self.url,
            *(refspecs or REFSPECS),
            what="fetch",
            git_dir=git_dir,
        )
        (git_dir / FETCHED_MARK).touch()

    def update(self, ref: str) -> None:
        """Create the mirror, or fetch into it (held under the exclusive lock)."""
        if self.path.is_dir():
            self.fetch(self.path)
        else:
            staging = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                self.run("init", "--quiet", "--bare", "--template=", str(staging), what="init")
                self.fetch(staging)
                staging.rename(self.path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if len(ref) == 40 and COMMIT_ID_RE.fullmatch(ref) and self.resolve(ref) is None:
            # A commit no branch or tag holds (servers that allow fetching it by id).
            with suppress(WorkspaceError):
                self.fetch(self.path, ref)

    def paths(self, sha: str) -> set[str]:
        out = self.run("ls-tree", "-r", "-z", "--name-only", "--full-tree", sha, what="ls-tree")
        return {name for name in out.stdout.split("\0") if name}

    def export(self, sha: str, tree: Path) -> None:
        index = tree.with_name(f"{tree.name}.index")
        try:
            self.run(
                f"--work-tree={tree}",
                "read-tree",
                "--reset",
                "-u",
                sha,
                what="checkout",
                env={"GIT_INDEX_FILE": str(index)},
            )
        finally:
            index.unlink(missing_ok=True)


@contextmanager
def _mirror_at(
    root: Path, source: RepoSource, base_ref: str, *, timeout: float, ttl: float
) -> Iterator[tuple[_Mirror, str]]:
    """(mirror, base commit) with the mirror fetched per the refresh policy and held under
    its shared lock for the block."""
    ref = _base_ref_check(base_ref)
    mirror = _Mirror(Path(root), source, timeout)
    with _flock(mirror.lock, fcntl.LOCK_SH) as fd:
        sha = mirror.resolve(ref)
        if sha is None or (sha != ref and not mirror.fresh(ttl)):
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # Another process may have fetched while this one waited.
                sha = mirror.resolve(ref)
                if sha is None or (sha != ref and not mirror.fresh(ttl)):
                    mirror.update(ref)
                    sha = mirror.resolve(ref)
            finally:
                fcntl.flock(fd, fcntl.LOCK_SH)
        if sha is None:
            raise WorkspaceError(
                "not_found",
                f"base ref {ref} does not exist in the repository: push it first or name an "
                "existing branch, tag or commit",
            )
        os.utime(mirror.path)
        yield mirror, sha


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def mirrors_evict(*, root: Path, max_bytes: int, keep: Collection[str] = ()) -> list[str]:
    """Remove least-recently-used mirrors (`<name>.git`) until they take at most
    `max_bytes`; the names removed. Mirrors in `keep` and mirrors another process holds
    are left alone."""
    mirrors = Path(root) / MIRRORS
    if not mirrors.is_dir():
        return []
    entries = []
    for entry in mirrors.iterdir():
        if entry.suffix == ".git" and entry.is_dir() and not entry.is_symlink():
            entries.append((entry.stat().st_mtime, entry.name, entry, _size(entry)))
    total = sum(size for *_, size in entries)
    removed = []
    for _, name, path, size in sorted(entries):
        if total <= max_bytes:
            break
        if name in keep:
            continue
        fd = os.open(mirrors / f"{name.removesuffix('.git')}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    continue  # in use
                raise
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        total -= size
        removed.append(name)
    return removed


def base_paths(
    *,
    root: Path,
    source: RepoSource | None,
    base_ref: str,
    timeout_seconds: float = 120,
    fetch_ttl_seconds: float = 60,
) -> set[str]:
    """The paths of the files at `base_ref` (empty for no source), from the cached mirror."""
    if source is None:
        return set()
    with _mirror_at(
        Path(root), source, base_ref, timeout=timeout_seconds, ttl=fetch_ttl_seconds
    ) as (mirror, sha):
        return mirror.paths(sha)


# --- workspaces ----------------------------------------------------------------------------


def _base_contents(tree: Path, changes: Iterable[FileChange]) -> dict[str, str]:
    """{path: text at the base} of the files `changes` modify or delete (already checked
    to be files of the base, so no symlinked directory is on their way)."""
    contents = {}
    for change in changes:
        if change.action == "create":
            continue
        target = tree / change.path
        try:
            if target.is_symlink():
                contents[change.path] = os.readlink(target)
            else:
                contents[change.path] = target.read_bytes().decode("utf-8", "replace")
        except OSError:  # a submodule's directory
            continue
    return contents


def workspace_open(
    *,
    root: Path,
    source: RepoSource | None,
    base_ref: str,
    files: Iterable[Mapping | FileChange] = (),
    max_mb: int = 2048,
    timeout_seconds: float = 120,
    fetch_ttl_seconds: float = 60,
    max_files: int = 2000,
) -> Workspace:
    """A tree at `root/trees/<random>` holding `base_ref` of `source` (an empty tree for no
    source) with `files` applied; close it (or use it in `with`) to remove it. Raises
    UnsafeChangeSet (malformed, escaping or more than `max_files` files), ChangeSetConflict
    (does not fit the base) or WorkspaceError. Afterwards, mirrors beyond `max_mb` MiB are
    evicted, least recently used first."""
    changes = _changes(files, max_files)
    root = Path(root)
    trees = root / TREES
    trees.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(dir=trees))
    mirror_name = None
    try:
        if source is None:
            base_sha = None
            change_set_apply_check(changes=changes, existing=())
        else:
            with _mirror_at(
                root, source, base_ref, timeout=timeout_seconds, ttl=fetch_ttl_seconds
            ) as (mirror, base_sha):
                change_set_apply_check(changes=changes, existing=mirror.paths(base_sha))
                mirror.export(base_sha, tree)
                mirror_name = mirror.path.name
        base_files = _base_contents(tree, changes)
        # Deletes first, so a file may give way to a directory of the same name.
        change_set_write(tree, sorted(changes, key=lambda c: c.action != "delete"))
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    if mirror_name is not None:
        mirrors_evict(root=root, max_bytes=max_mb * 1024 * 1024, keep=(mirror_name,))
    return Workspace(path=tree, base_sha=base_sha, changes=changes, base_files=base_files)


# --- what a tree needs ---------------------------------------------------------------------


def _tree_files(path: Path) -> Iterator[str]:
    """The regular files below `path` (relative, `/`-separated), not following symlinks
    and skipping tool caches and installed packages."""
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        rel = os.path.relpath(dirpath, path)
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                yield name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")


def _is_manifest(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in MANIFEST_NAMES or fnmatch(name, "requirements*.txt")


def dependency_files_hash(path: Path) -> str:
    """sha256 over the dependency manifests in the tree (any depth, sorted by path; each
    path and content), or "" when there are none: the key of an installed-dependencies
    cache."""
    manifests = sorted(rel for rel in _tree_files(Path(path)) if _is_manifest(rel))
    if not manifests:
        return ""
    digest = hashlib.sha256()
    for rel in manifests:
        data = (Path(path) / rel).read_bytes()
        digest.update(b"%s\0%d\0" % (rel.encode(), len(data)))
        digest.update(data)
    return digest.hexdigest()


def _npm_test_script(path: Path) -> str | None:
    try:
        manifest = json.loads((path / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    scripts = manifest.get("scripts") if isinstance(manifest, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(test, str) or not test.strip() or test.strip() == NPM_DEFAULT_TEST:
        return None
    return test


def detect_test_command(path: Path) -> str | None:
    """How to run the tree's tests: "python -m pytest -q" for a Python project (a
    pyproject.toml, setup.py, setup.cfg, pytest.ini or tox.ini at the root, or a tests/
    directory holding .py files), else "npm test" when the root package.json has a real
    test script, else pytest when any .py file exists; None otherwise."""
    path = Path(path)
    tests = path / "tests"
    if any((path / name).is_file() for name in PYTHON_PROJECT_FILES) or (
        tests.is_dir()
        and not tests.is_symlink()
        and any(rel.endswith(".py") for rel in _tree_files(tests))
    ):
        return "python -m pytest -q"
    if _npm_test_script(path) is not None:
        return "npm test"
    if any(rel.endswith(".py") for rel in _tree_files(path)):
        return "python -m pytest -q"
    return None
