"""A change set as a git-style unified diff that `git apply` accepts.

Pure Python (no repository needed): `diff --git` headers, `new file mode` /
`deleted file mode`, `index` lines with real blob ids, three lines of context, and
`\\ No newline at end of file` markers, with paths quoted the way git quotes them.
"""

import difflib
from collections.abc import Iterable, Mapping
from itertools import islice

from integrations.change_set import FileChange, change_set_normalize, git_blob_sha

NULL_SHA = "0" * 7
MODE = "100644"
C_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def _quoted(prefix: str, path: str) -> str:
    """`prefix + path`, C-quoted as git does when it holds special or non-ASCII bytes."""
    name = prefix + path
    if all(32 <= ord(ch) < 127 and ch not in '"\\' for ch in name):
        return name
    out = []
    for ch in name:
        if ch in C_ESCAPES:
            out.append(C_ESCAPES[ch])
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.extend(f"\\{byte:03o}" for byte in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def _lines(text: str) -> list[str]:
    """`text` split after each "\\n" only (str.splitlines also splits on \\r, \\f, ...)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _hunks(old: str, new: str) -> list[str]:
    out = []
    diff = difflib.unified_diff(_lines(old), _lines(new), n=3, lineterm="")
    # The first two lines are difflib's own ---/+++ header (content lines may start
    # with "---" too, so they are skipped by position, not by prefix).
    for line in islice(diff, 2, None):
        if line.startswith("@@"):
            out.append(line + "\n")
            continue
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return out


def _file_patch(path: str, old: str | None, new: str | None) -> str:
    a, b = _quoted("a/", path), _quoted("b/", path)
    old_id = git_blob_sha(old.encode())[:7] if old is not None else NULL_SHA
    new_id = git_blob_sha(new.encode())[:7] if new is not None else NULL_SHA
    head = [f"diff --git {a} {b}\n"]
    if old is None:
        head += [f"new file mode {MODE}\n", f"index {old_id}..{new_id}\n"]
    elif new is None:
        head += [f"deleted file mode {MODE}\n", f"index {old_id}..{new_id}\n"]
    else:
        head += [f"index {old_id}..{new_id} {MODE}\n"]
    hunks = _hunks(old or "", new or "")
    if hunks:
        # Like git, end a name holding a space with a tab so it cannot be misread.
        tab = "\t" if " " in path else ""
        head += [f"--- {a + tab if old is not None else '/dev/null'}\n"]
        head += [f"+++ {b + tab if new is not None else '/dev/null'}\n"]
    return "".join(head + hunks)


def git_change_set_patch(
    *, files: Iterable[Mapping | FileChange], base_files: Mapping[str, str] | None = None
) -> str:
    """The change set as one patch against `base_files` ({path: content} of the files it
    touches at the base). A create over an existing base file is a modification; a modify
    or delete needs the file's base content. Files left unchanged produce nothing."""
    base = dict(base_files or {})
    patches = []
    for change in change_set_normalize(files):
        old = base.get(change.path)
        if change.action != "create" and old is None:
            raise ValueError(
                f"{change.action} of {change.path} needs its base content in base_files"
            )
        if old == change.content:
            continue
        patches.append(_file_patch(change.path, old, change.content))
    return "".join(patches)
