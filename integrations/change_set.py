"""Change sets: files created, modified (full new content) or deleted, as one commit.

Both the GitHub client and the local git workspace take the same shape, the one the
implementation phase's evidence uses: `[{"path", "action", "content"}]`. Paths are
checked here once: relative, normalised, inside the repository, never under `.git`.
"""

import hashlib
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ACTIONS = ("create", "modify", "delete")
MAX_PATH_CHARS = 500


class UnsafeChangeSet(ValueError):
    """A change set with a malformed entry or a path that leaves the repository."""


@dataclass(frozen=True)
class FileChange:
    """One file of a change set; `content` is None exactly when `action` is delete."""

    path: str
    action: str
    content: str | None = None

    @property
    def data(self) -> bytes | None:
        return None if self.content is None else self.content.encode("utf-8")


def repo_path_check(path: str) -> str:
    """`path`, normalised, if it names a file inside a repository (not under .git)."""
    if not isinstance(path, str) or not path:
        raise UnsafeChangeSet("a file path must be a non-empty string")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafeChangeSet(f"file path is longer than {MAX_PATH_CHARS} characters")
    if "\\" in path or "\x00" in path or any(ord(ch) < 32 for ch in path):
        raise UnsafeChangeSet(f"file path {path!r} contains a backslash or control character")
    if path.startswith("/"):
        raise UnsafeChangeSet(f"file path {path!r} is absolute; give it relative to the root")
    normalised = posixpath.normpath(path)
    parts = normalised.split("/")
    if normalised in {".", ""} or parts[0] == "..":
        raise UnsafeChangeSet(f"file path {path!r} leaves the repository")
    if any(part.lower() == ".git" for part in parts):
        raise UnsafeChangeSet(f"file path {path!r} is inside .git")
    return normalised


def change_set_normalize(files: Iterable[Mapping | FileChange]) -> tuple[FileChange, ...]:
    """The change set as FileChanges with checked, unique paths, in the given order."""
    changes: list[FileChange] = []
    seen: set[str] = set()
    for index, item in enumerate(files):
        if isinstance(item, FileChange):
            raw_path, action, content = item.path, item.action, item.content
        elif isinstance(item, Mapping):
            raw_path, action, content = item.get("path"), item.get("action"), item.get("content")
        else:
            raise UnsafeChangeSet(f"files[{index}] must be a mapping with path and action")
        path = repo_path_check(raw_path)
        if action not in ACTIONS:
            raise UnsafeChangeSet(
                f"files[{index}] ({path}): action must be one of {', '.join(ACTIONS)}"
            )
        if action == "delete":
            if content is not None:
                raise UnsafeChangeSet(f"files[{index}] ({path}): a delete carries no content")
        elif not isinstance(content, str):
            raise UnsafeChangeSet(
                f"files[{index}] ({path}): {action} needs the file's full new content as text"
            )
        if path in seen:
            raise UnsafeChangeSet(f"files[{index}]: {path} appears more than once")
        seen.add(path)
        changes.append(FileChange(path=path, action=action, content=content))
    if not changes:
        raise UnsafeChangeSet("the change set has no files")
    _check_file_directory_clashes(changes)
    return tuple(changes)


def _check_file_directory_clashes(changes: list[FileChange]) -> None:
    """Refuse a change set that writes both `a` and `a/b`: one would have to be a directory."""
    written = {c.path for c in changes if c.action != "delete"}
    for path in written:
        parent = posixpath.dirname(path)
        while parent:
            if parent in written:
                raise UnsafeChangeSet(f"{parent} cannot be both a file and the directory of {path}")
            parent = posixpath.dirname(parent)


def git_blob_sha(data: bytes) -> str:
    """The object id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()
