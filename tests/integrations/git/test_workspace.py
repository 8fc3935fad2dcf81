import os

import pytest

from integrations.change_set import UnsafeChangeSet
from integrations.git import GitWorkspaceError, git_change_set_patch, git_change_set_push
from integrations.repository import UnsafeRepositoryReference
from tests.integrations.conftest import TOKEN
from tests.integrations.git_helpers import git, subprocess_calls_record, write

BASE_FILES = {
    "README.md": "# App\n",
    "app/main.py": "def main():\n    return 1\n",
    "app/util.py": "X = 1\n",
    "notes.txt": "no trailing newline",
    "old/legacy.py": "legacy = True\n",
}
CHANGE_SET = [
    {"path": "app/main.py", "action": "modify", "content": "def main():\n    return 2\n"},
    {"path": "app/feature/new.py", "action": "create", "content": "NEW = 'ü'\n"},
    {"path": "old/legacy.py", "action": "delete"},
]


def tree_of(remote, ref) -> dict[str, str]:
    names = git("ls-tree", "-r", "--name-only", "-z", ref, cwd=remote).split("\0")
    return {n: git("show", f"{ref}:{n}", cwd=remote) for n in names if n}


def expected(base, change_set):
    files = dict(base)
    for change in change_set:
        if change["action"] == "delete":
            files.pop(change["path"])
        else:
            files[change["path"]] = change["content"]
    return files


@pytest.fixture
def remote(tmp_path):
    """A bare repository whose main branch holds BASE_FILES."""
    bare = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    git("init", "--quiet", "-b", "main", str(seed), cwd=tmp_path)
    write(seed, BASE_FILES)
    os.symlink(str(tmp_path / "outside"), seed / "escape")
    git("add", "-A", cwd=seed)
    git("commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", str(bare), "main", cwd=seed)
    (tmp_path / "outside").mkdir()
    return bare


def push(remote, tmp_path, files=CHANGE_SET, branch="topdog/wf-1", **extra):
    return git_change_set_push(
        remote_url=f"file://{remote}",
        base_branch="main",
        branch=branch,
        message="Implement the feature",
        files=files,
        author_name="TopDog",
        author_email="topdog@example.com",
        workdir=tmp_path,
        **{"allow_local_paths": True, **extra},
    )


def test_push_creates_the_branch_with_exactly_the_change_set(remote, tmp_path):
    main = git("rev-parse", "main", cwd=remote).strip()

    result = push(remote, tmp_path)

    assert result.pushed is True
    assert result.branch == "topdog/wf-1"
    assert git("rev-parse", "topdog/wf-1", cwd=remote).strip() == result.commit_sha
    assert git("rev-parse", f"{result.commit_sha}^", cwd=remote).strip() == main
    files = tree_of(remote, "topdog/wf-1")
    files.pop("escape")  # the symlink blob, unchanged
    assert files == expected(BASE_FILES, CHANGE_SET)
    log = git("log", "-1", "--format=%an <%ae>%n%s", "topdog/wf-1", cwd=remote)
    assert log == "TopDog <topdog@example.com>\nImplement the feature\n"
    assert git("rev-parse", "main", cwd=remote).strip() == main  # base untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("topdog-git-")] == []


def test_second_push_is_a_no_op(remote, tmp_path):
    first = push(remote, tmp_path)

    second = push(remote, tmp_path)

    assert second.pushed is False
    assert second.commit_sha == first.commit_sha
    assert git("rev-list", "--count", "main..topdog/wf-1", cwd=remote).strip() == "1"


def test_a_new_change_set_on_an_existing_branch_adds_one_commit(remote, tmp_path):
    first = push(remote, tmp_path)
    follow_up = [{"path": "app/util.py", "action": "modify", "content": "X = 2\n"}]

    second = push(remote, tmp_path, files=follow_up)

    assert second.pushed is True
    assert git("rev-parse", f"{second.commit_sha}^", cwd=remote).strip() == first.commit_sha
    assert tree_of(remote, "topdog/wf-1")["app/util.py"] == "X = 2\n"


def test_file_remotes_need_the_explicit_flag(remote, tmp_path):
    with pytest.raises(UnsafeRepositoryReference):
        push(remote, tmp_path, allow_local_paths=False)
    assert git("branch", "--list", "topdog/*", cwd=remote) == ""


@pytest.mark.parametrize(
    "path", ["../escaped.txt", "/etc/passwd", ".git/config", "app/../../x", "escape/pwned.txt"]
)
def test_paths_escaping_the_workspace_are_refused(remote, tmp_path, path):
    files = [{"path": path, "action": "create", "content": "pwned\n"}]

    with pytest.raises(UnsafeChangeSet):
        push(remote, tmp_path, files=files)

    assert not (tmp_path / "outside" / "pwned.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert git("branch", "--list", "topdog/*", cwd=remote) == ""


def test_a_missing_base_branch(remote, tmp_path):
    with pytest.raises(GitWorkspaceError) as caught:
        git_change_set_push(
            remote_url=f"file://{remote}",
            base_branch="develop",
            branch="topdog/wf-1",
            message="m",
            files=CHANGE_SET,
            author_name="TopDog",
            author_email="topdog@example.com",
            allow_local_paths=True,
        )

    assert caught.value.kind == "not_found"
    assert "base branch develop does not exist" in str(caught.value)


def test_the_token_never_reaches_argv(remote, tmp_path, monkeypatch):
    calls = subprocess_calls_record(monkeypatch)

    push(remote, tmp_path, token=TOKEN)

    assert calls
    assert all(TOKEN not in " ".join(argv) for argv, _ in calls)
    env = calls[0][1]
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == f"http.file://{remote}.extraHeader"
    assert TOKEN not in env["GIT_CONFIG_VALUE_0"]  # base64 of x-access-token:<token>


def test_git_failures_are_scrubbed_of_the_token(tmp_path):
    missing = tmp_path / "missing.git"

    with pytest.raises(GitWorkspaceError) as caught:
        git_change_set_push(
            remote_url=f"file://{missing}",
            base_branch="main",
            branch="b",
            message="m",
            files=CHANGE_SET,
            author_name="TopDog",
            author_email="topdog@example.com",
            token=TOKEN,
            allow_local_paths=True,
        )

    assert caught.value.kind == "failed"
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)


# --- patches -------------------------------------------------------------------------------


def checkout_of_main(remote, tmp_path):
    work = tmp_path / "work"
    git("clone", "--quiet", f"file://{remote}", str(work), cwd=tmp_path)
    return work


def test_patch_applies_cleanly_to_the_base_and_matches_the_pushed_branch(remote, tmp_path):
    base = {c["path"]: BASE_FILES[c["path"]] for c in CHANGE_SET if c["path"] in BASE_FILES}
    patch = git_change_set_patch(files=CHANGE_SET, base_files=base)
    work = checkout_of_main(remote, tmp_path)
    (tmp_path / "change.patch").write_text(patch)

    git("apply", "--check", str(tmp_path / "change.patch"), cwd=work)
    git("apply", "--index", str(tmp_path / "change.patch"), cwd=work)
    git("commit", "--quiet", "-m", "patched", cwd=work)

    assert "diff --git a/app/feature/new.py b/app/feature/new.py\nnew file mode 100644\n" in patch
    assert "diff --git a/old/legacy.py b/old/legacy.py\ndeleted file mode 100644\n" in patch
    pushed = push(remote, tmp_path)
    tree = git("rev-parse", "HEAD^{tree}", cwd=work).strip()
    assert tree == git("rev-parse", f"{pushed.commit_sha}^{{tree}}", cwd=remote).strip()


def test_patch_edge_cases_apply(remote, tmp_path):
    files = [
        {"path": "notes.txt", "action": "modify", "content": "now with a newline\n"},
        {"path": "README.md", "action": "modify", "content": "# App\n--- not a header\nend"},
        {"path": "empty.txt", "action": "create", "content": ""},
        {"path": "my notes.txt", "action": "create", "content": "spaced\n"},
        {"path": "dir/naïve file.txt", "action": "create", "content": "a\r\nb\r\n"},
        {"path": "app/util.py", "action": "modify", "content": "X = 1\n"},  # unchanged
        {"path": "app/main.py", "action": "delete"},
    ]
    base = {p: BASE_FILES[p] for p in ("notes.txt", "README.md", "app/util.py", "app/main.py")}
    patch = git_change_set_patch(files=files, base_files=base)
    work = checkout_of_main(remote, tmp_path)
    (tmp_path / "edge.patch").write_text(patch)

    git("apply", "--check", str(tmp_path / "edge.patch"), cwd=work)
    git("apply", str(tmp_path / "edge.patch"), cwd=work)

    assert "\\ No newline at end of file" in patch
    assert "app/util.py" not in patch
    assert (work / "notes.txt").read_text() == "now with a newline\n"
    assert (work / "README.md").read_text() == "# App\n--- not a header\nend"
    assert (work / "empty.txt").read_bytes() == b""
    assert "--- /dev/null\n+++ b/my notes.txt\t\n" in patch  # as git writes it
    assert (work / "my notes.txt").read_text() == "spaced\n"
    assert (work / "dir" / "naïve file.txt").read_bytes() == b"a\r\nb\r\n"
    assert not (work / "app" / "main.py").exists()


def test_patch_needs_base_content_for_modify_and_delete():
    with pytest.raises(ValueError, match="needs its base content"):
        git_change_set_patch(files=[{"path": "a.py", "action": "modify", "content": "x"}])

    only_creates = git_change_set_patch(
        files=[{"path": "a.py", "action": "create", "content": "x\n"}], base_files=None
    )
    assert only_creates.startswith("diff --git a/a.py b/a.py\nnew file mode 100644\n")
