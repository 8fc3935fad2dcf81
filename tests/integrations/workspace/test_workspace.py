import base64
import os
import threading
from pathlib import Path

import pytest

from integrations.change_set import FileChange, UnsafeChangeSet
from integrations.workspace import (
    ChangeSetConflict,
    RepoSource,
    WorkspaceError,
    base_paths,
    change_set_apply_check,
    mirrors_evict,
    workspace_open,
)
from tests.integrations.conftest import TOKEN
from tests.integrations.git_helpers import git, subprocess_calls_record
from tests.integrations.workspace.conftest import BASE_FILES, Origin

CHANGE_SET = [
    {"path": "app/main.py", "action": "modify", "content": "def main():\n    return 2\n"},
    {"path": "app/feature/new.py", "action": "create", "content": "NEW = 'ü'\n"},
    {"path": "old/legacy.py", "action": "delete"},
]


def files_below(path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, names in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in names + links:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            out[rel] = os.readlink(full) if os.path.islink(full) else Path(full).read_text()
    return out


def trees(root) -> list[str]:
    """The workspaces left under root (none once all are closed)."""
    return [p.name for p in (root / "trees").iterdir()] if (root / "trees").exists() else []


def mirrors(root) -> list[str]:
    return sorted(p.name for p in (root / "mirrors").glob("*.git"))


def test_a_workspace_holds_the_base_with_the_change_set(origin, root, tmp_path):
    with workspace_open(root=root, source=origin.source(), base_ref="main", files=CHANGE_SET) as ws:
        assert ws.base_sha == origin.main
        assert ws.path.parent == root / "trees"
        tree = files_below(ws.path)
        assert tree["app/main.py"] == "def main():\n    return 2\n"
        assert tree["app/feature/new.py"] == "NEW = 'ü'\n"
        assert "old/legacy.py" not in tree
        assert tree["README.md"] == BASE_FILES["README.md"]
        assert tree["escape"] == str(origin.outside)  # symlinks kept as links
        assert not (ws.path / ".git").exists()

        # The diff turns a checkout of the base into the workspace.
        work = tmp_path / "check"
        git("clone", "--quiet", f"file://{origin.bare}", str(work), cwd=tmp_path)
        (work / "patch.diff").write_text(ws.diff())
        git("apply", "patch.diff", cwd=work)
        (work / "patch.diff").unlink()
        assert files_below(work) == tree
    assert not ws.path.exists()


def test_the_mirror_is_cloned_once_then_fetched_after_the_ttl(origin, root):
    with workspace_open(root=root, source=origin.source(), base_ref="main"):
        pass
    [name] = mirrors(root)
    mirror = root / "mirrors" / name
    inode = mirror.stat().st_ino
    (mirror / "created-once").touch()
    newer = origin.commit("second", {"app/util.py": "X = 2\n"})

    with workspace_open(root=root, source=origin.source(), base_ref="main") as ws:
        assert ws.base_sha == origin.main  # fetched less than a TTL ago: not fetched
    with workspace_open(
        root=root, source=origin.source(), base_ref="main", fetch_ttl_seconds=0
    ) as ws:
        assert ws.base_sha == newer
        assert (ws.path / "app/util.py").read_text() == "X = 2\n"

    assert mirrors(root) == [name]
    assert mirror.stat().st_ino == inode and (mirror / "created-once").exists()


def test_a_ref_missing_from_the_mirror_is_fetched_within_the_ttl(origin, root):
    with workspace_open(root=root, source=origin.source(), base_ref="main"):
        pass
    sha = origin.commit("feature", {"f.txt": "f\n"}, branch="feature/x")
    git("tag", "v1.0", sha, cwd=origin.bare)

    for ref in ("feature/x", "v1.0", sha, sha[:10]):
        with workspace_open(root=root, source=origin.source(), base_ref=ref) as ws:
            assert ws.base_sha == sha, ref


def test_a_missing_base_ref_is_not_found(origin, root):
    with pytest.raises(WorkspaceError) as caught:
        workspace_open(root=root, source=origin.source(), base_ref="develop")

    assert caught.value.kind == "not_found"
    assert "base ref develop does not exist" in str(caught.value)
    assert trees(root) == []


def test_an_unreachable_remote_fails_without_leaving_a_mirror(tmp_path, root):
    source = RepoSource(url=f"file://{tmp_path / 'missing.git'}", allow_local=True)

    with pytest.raises(WorkspaceError) as caught:
        workspace_open(root=root, source=source, base_ref="main")

    assert caught.value.kind == "failed"
    assert mirrors(root) == []
    assert [p.name for p in (root / "mirrors").iterdir()] == [
        p.name for p in (root / "mirrors").glob("*.lock")
    ]


def test_remotes_are_checked(root):
    for url in ("file:///tmp/x.git", "https://evil.example/a/b.git", "ssh://github.com/a/b"):
        with pytest.raises(ValueError):
            workspace_open(root=root, source=RepoSource(url=url), base_ref="main")


def test_conflicts_name_every_path(origin, root):
    files = [
        {"path": "missing.py", "action": "modify", "content": "x\n"},
        {"path": "gone.py", "action": "delete"},
        {"path": "README.md", "action": "create", "content": "again\n"},
        {"path": "app/new.py", "action": "create", "content": "ok\n"},
    ]

    with pytest.raises(ChangeSetConflict) as caught:
        workspace_open(root=root, source=origin.source(), base_ref="main", files=files)

    assert [p["path"] for p in caught.value.problems] == ["missing.py", "gone.py", "README.md"]
    for path in ("missing.py", "gone.py", "README.md"):
        assert path in str(caught.value)
    assert trees(root) == []


def test_apply_check_directories_and_files_in_the_way():
    existing = {"app/main.py", "docs", "notes.txt"}
    changes = [
        FileChange("app", "modify", "x"),
        FileChange("notes.txt/inner.md", "create", "x"),
        FileChange("docs", "delete"),
        FileChange("docs/index.md", "create", "x"),  # docs gives way in the same set
        FileChange("app/main.py", "modify", "y"),
    ]

    with pytest.raises(ChangeSetConflict) as caught:
        change_set_apply_check(changes=changes, existing=existing)

    assert caught.value.problems == [
        {"path": "app", "message": "is a directory at the base; modify its files instead"},
        {
            "path": "notes.txt/inner.md",
            "message": "notes.txt is a file at the base, not a directory",
        },
    ]
    change_set_apply_check(changes=changes[2:], existing=existing)


def test_a_file_may_give_way_to_a_directory(origin, root):
    files = [
        {"path": "README.md/index.md", "action": "create", "content": "x\n"},
        {"path": "README.md", "action": "delete"},
    ]
    with workspace_open(root=root, source=origin.source(), base_ref="main", files=files) as ws:
        assert (ws.path / "README.md" / "index.md").read_text() == "x\n"


def test_no_source_is_an_empty_tree(root):
    files = [{"path": "src/app.py", "action": "create", "content": "A = 1\n"}]
    with workspace_open(root=root, source=None, base_ref="main", files=files) as ws:
        assert ws.base_sha is None
        assert files_below(ws.path) == {"src/app.py": "A = 1\n"}
        assert "new file mode" in ws.diff()
    assert not (root / "mirrors").exists()

    with pytest.raises(ChangeSetConflict):
        workspace_open(
            root=root, source=None, base_ref="main", files=[{"path": "a", "action": "delete"}]
        )
    assert base_paths(root=root, source=None, base_ref="main") == set()


def test_the_tree_is_removed_when_the_body_raises(origin, root):
    with (
        pytest.raises(RuntimeError),
        workspace_open(root=root, source=origin.source(), base_ref="main") as ws,
    ):
        (ws.path / "build.log").write_text("x")
        raise RuntimeError("boom")
    assert not ws.path.exists()
    assert trees(root) == []


def test_two_workspaces_at_once_are_independent(origin, root):
    one = [{"path": "app/main.py", "action": "modify", "content": "ONE\n"}]
    two = [{"path": "app/main.py", "action": "delete"}]
    with (
        workspace_open(root=root, source=origin.source(), base_ref="main", files=one) as a,
        workspace_open(root=root, source=origin.source(), base_ref="main", files=two) as b,
    ):
        assert a.path != b.path
        assert (a.path / "app/main.py").read_text() == "ONE\n"
        assert not (b.path / "app/main.py").exists()
        (a.path / "scratch").write_text("a only")
        assert not (b.path / "scratch").exists()
    assert mirrors(root) == [mirrors(root)[0]]


def test_concurrent_first_opens_share_one_mirror(origin, root):
    shas, errors = [], []

    def open_one():
        try:
            with workspace_open(root=root, source=origin.source(), base_ref="main") as ws:
                shas.append(ws.base_sha)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert shas == [origin.main] * 4
    assert len(mirrors(root)) == 1


def test_least_recently_used_mirrors_are_evicted(tmp_path, root):
    first, second = Origin(tmp_path, "first"), Origin(tmp_path, "second")
    with workspace_open(root=root, source=first.source(), base_ref="main"):
        pass
    [old] = mirrors(root)
    with workspace_open(root=root, source=second.source(), base_ref="main"):
        pass
    [new] = set(mirrors(root)) - {old}
    os.utime(root / "mirrors" / old, (1_000_000, 1_000_000))  # used long ago

    assert mirrors_evict(root=root, max_bytes=10**9) == []
    assert mirrors_evict(root=root, max_bytes=1, keep={old}) == [new]
    assert mirrors(root) == [old]

    # Opening evicts down to max_mb, keeping the mirror it uses.
    with workspace_open(root=root, source=second.source(), base_ref="main", max_mb=0):
        pass
    assert mirrors(root) == [new]


def test_a_mirror_in_use_is_not_evicted(origin, root):
    import fcntl

    with workspace_open(root=root, source=origin.source(), base_ref="main"):
        pass
    [name] = mirrors(root)
    with open(root / "mirrors" / f"{name.removesuffix('.git')}.lock") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        assert mirrors_evict(root=root, max_bytes=0) == []
    assert mirrors_evict(root=root, max_bytes=0) == [name]


def test_base_paths_lists_the_files_at_the_base(origin, root):
    paths = base_paths(root=root, source=origin.source(), base_ref="main")
    assert paths == set(BASE_FILES) | {"escape", "link.txt"}


@pytest.mark.parametrize("path", ["../escaped.txt", "/etc/passwd", ".git/config", "app/../../x"])
def test_paths_leaving_the_tree_are_refused(origin, root, tmp_path, path):
    files = [{"path": path, "action": "create", "content": "pwned\n"}]
    with pytest.raises(UnsafeChangeSet):
        workspace_open(root=root, source=origin.source(), base_ref="main", files=files)
    assert not (tmp_path / "escaped.txt").exists()
    assert trees(root) == []


def test_a_symlink_in_the_base_does_not_let_a_write_escape(origin, root):
    (origin.outside / "secret.txt").write_text("secret\n")
    through_dir = [{"path": "escape/pwned.txt", "action": "create", "content": "pwned\n"}]
    with pytest.raises(ChangeSetConflict) as caught:
        workspace_open(root=root, source=origin.source(), base_ref="main", files=through_dir)
    assert caught.value.problems[0]["message"] == "escape is a file at the base, not a directory"
    assert not (origin.outside / "pwned.txt").exists()

    # Modifying a linked file replaces the link; the file it pointed at is untouched.
    over_link = [{"path": "link.txt", "action": "modify", "content": "mine\n"}]
    with workspace_open(root=root, source=origin.source(), base_ref="main", files=over_link) as ws:
        assert not (ws.path / "link.txt").is_symlink()
        assert (ws.path / "link.txt").read_text() == "mine\n"
        assert "-../outside/secret.txt" in ws.diff()
    assert (origin.outside / "secret.txt").read_text() == "secret\n"


def test_too_many_files_are_refused(root):
    files = [{"path": f"f{i}.txt", "action": "create", "content": ""} for i in range(10_000)]
    with pytest.raises(UnsafeChangeSet, match="10000 files; at most 2000"):
        workspace_open(root=root, source=None, base_ref="main", files=files)


def test_the_token_stays_out_of_argv_the_mirror_and_the_tree(origin, root, monkeypatch):
    calls = subprocess_calls_record(monkeypatch)
    source = origin.source(token=TOKEN)

    with workspace_open(root=root, source=source, base_ref="main", files=CHANGE_SET) as ws:
        header = base64.b64encode(f"x-access-token:{TOKEN}".encode())
        assert calls and all(TOKEN not in " ".join(argv) for argv, _ in calls)
        assert any(env.get("GIT_CONFIG_VALUE_0", "").endswith(header.decode()) for _, env in calls)
        for dirpath, _, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    data = Path(full).read_bytes()
                    assert TOKEN.encode() not in data and header not in data, full
        assert ws.path.exists()


def test_git_errors_are_scrubbed_of_the_token(origin, root, tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_git = fake_bin / "git"
    fake_git.write_text(
        '#!/bin/sh\necho "fatal: sent $GIT_CONFIG_VALUE_0 for $GIT_CONFIG_KEY_0" >&2\nexit 128\n'
    )
    fake_git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")

    with pytest.raises(WorkspaceError) as caught:
        workspace_open(root=root, source=origin.source(token=TOKEN), base_ref="main")

    header = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    message = str(caught.value) + repr(caught.value)
    assert caught.value.kind == "failed"
    assert "Authorization: Basic [redacted]" in message
    assert TOKEN not in message and header not in message
