import json

import pytest

from integrations.change_set import (
    FileChange,
    UnsafeChangeSet,
    change_set_normalize,
    git_blob_sha,
    repo_path_check,
)
from integrations.detection import (
    frameworks_detect,
    languages_from_byte_counts,
    languages_from_paths,
    manifest_paths,
)
from tests.integrations.fake_github import FakeRepo
from tests.integrations.git_helpers import git


def test_change_sets_are_normalised():
    changes = change_set_normalize(
        [
            {"path": "src/./pkg/../app.py", "action": "modify", "content": "x"},
            {"path": ".github/workflows/ci.yml", "action": "create", "content": "on: push\n"},
            FileChange("old.py", "delete"),
        ]
    )

    assert [c.path for c in changes] == ["src/app.py", ".github/workflows/ci.yml", "old.py"]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([], "no files"),
        ([{"path": "a", "action": "rename", "content": "x"}], "action must be"),
        ([{"path": "a", "action": "create"}], "full new content"),
        ([{"path": "a", "action": "delete", "content": "x"}], "carries no content"),
        ([{"path": "a", "action": "create", "content": "1"}] * 2, "more than once"),
        (
            [
                {"path": "a", "action": "create", "content": "1"},
                {"path": "a/b", "action": "create", "content": "2"},
            ],
            "both a file and the directory",
        ),
        ([{"path": "../a", "action": "create", "content": "x"}], "leaves the repository"),
        ([{"path": "/a", "action": "create", "content": "x"}], "absolute"),
        ([{"path": "a/.GIT/hooks/x", "action": "create", "content": "x"}], "inside .git"),
        ([{"path": "a\\b", "action": "create", "content": "x"}], "backslash"),
        ([{"path": "a\nb", "action": "create", "content": "x"}], "control"),
        ([{"path": ".", "action": "create", "content": "x"}], "leaves the repository"),
    ],
)
def test_bad_change_sets_are_refused(files, reason):
    with pytest.raises(UnsafeChangeSet, match=reason):
        change_set_normalize(files)


def test_paths_that_only_look_like_git_are_fine():
    assert repo_path_check("docs/.git-notes.md") == "docs/.git-notes.md"
    assert repo_path_check(".gitignore") == ".gitignore"


def test_the_fake_hashes_objects_like_git(tmp_path):
    files = {"README.md": "# x\n", "src/app.py": "print(1)\n", "src/a/b.txt": "", "z": "z"}
    for path, content in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git("init", "--quiet", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    repo = FakeRepo("a", "b")

    sha = repo.commit_files(files)

    assert repo.commits[sha]["tree"] == git("write-tree", cwd=tmp_path).strip()
    assert git_blob_sha(b"print(1)\n") == git("hash-object", "src/app.py", cwd=tmp_path).strip()


def test_languages():
    assert languages_from_byte_counts({"Python": 10, "Go": 99, "url": "x"}) == ("Go", "Python")
    paths = ["a.py", "b.py", "c.ts", "index.html", "node_modules/x/y.js", "s.css"]
    assert languages_from_paths(paths) == ("Python", "TypeScript", "CSS", "HTML")


def test_frameworks_from_manifests_and_markers():
    manifests = {
        "pyproject.toml": '[project]\ndependencies = ["FastAPI>=0.110", "uvicorn"]\n',
        "backend/requirements.txt": "flask==3.0\n# django\n",
        "frontend/package.json": json.dumps({"devDependencies": {"@angular/core": "17"}}),
        "Gemfile": "source 'https://rubygems.org'\ngem 'rails', '~> 7.1'\n",
        "pom.xml": "<artifactId>spring-boot-starter-web</artifactId>",
        "go.mod": "require github.com/gin-gonic/gin v1.9.1\n",
        "Cargo.toml": '[dependencies]\naxum = "0.7"\n',
        "broken/package.json": "{not json",
    }

    found = frameworks_detect(manifests, ["manage.py"])

    assert found == ("angular", "axum", "django", "fastapi", "flask", "gin", "rails", "spring")


def test_manifest_paths_are_shallow_and_skip_vendored_trees():
    paths = [
        "package.json",
        "a/b/c/package.json",
        "node_modules/x/package.json",
        "api/pyproject.toml",
    ]

    assert manifest_paths(paths) == ("package.json", "api/pyproject.toml")
