import json
import os

import pytest

from integrations.workspace import dependency_files_hash, detect_test_command
from tests.integrations.git_helpers import write


def test_dependency_files_hash_follows_the_manifests_only(tmp_path):
    assert dependency_files_hash(tmp_path) == ""
    write(tmp_path, {"src/app.py": "A = 1\n", "requirements.txt": "django\n"})
    first = dependency_files_hash(tmp_path)
    assert len(first) == 64

    write(tmp_path, {"src/app.py": "A = 2\n", "README.md": "x\n"})
    write(tmp_path, {"node_modules/left-pad/package.json": "{}", ".venv/pyproject.toml": ""})
    assert dependency_files_hash(tmp_path) == first

    write(tmp_path, {"requirements.txt": "django\nrequests\n"})
    second = dependency_files_hash(tmp_path)
    assert second != first
    write(tmp_path, {"web/package-lock.json": "{}"})
    assert dependency_files_hash(tmp_path) not in {first, second}


def test_dependency_files_hash_covers_paths_and_skips_links(tmp_path):
    write(tmp_path, {"a/requirements-dev.txt": "pytest\n"})
    moved = tmp_path / "moved"
    write(moved, {"b/requirements-dev.txt": "pytest\n"})
    assert dependency_files_hash(tmp_path / "a") != dependency_files_hash(moved)

    outside = tmp_path / "outside.txt"
    outside.write_text("changes\n")
    os.symlink(outside, tmp_path / "a" / "requirements.txt")
    before = dependency_files_hash(tmp_path / "a")
    outside.write_text("changed\n")
    assert dependency_files_hash(tmp_path / "a") == before


def npm(scripts) -> dict[str, str]:
    return {"package.json": json.dumps({"name": "x", "scripts": scripts})}


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, None),
        ({"README.md": "x"}, None),
        ({"tool.py": "x = 1\n"}, "python -m pytest -q"),
        ({"pyproject.toml": ""}, "python -m pytest -q"),
        ({"setup.cfg": ""}, "python -m pytest -q"),
        ({"pytest.ini": ""}, "python -m pytest -q"),
        ({"tests/test_a.py": ""}, "python -m pytest -q"),
        (npm({"test": "jest"}), "npm test"),
        (npm({"test": 'echo "Error: no test specified" && exit 1'}), None),
        (npm({"build": "tsc"}), None),
        ({"package.json": "{not json"}, None),
        # A Node project with a helper script is still a Node project...
        ({**npm({"test": "vitest"}), "scripts/gen.py": "", "tests/a.test.js": ""}, "npm test"),
        # ...but a Python project with a frontend is a Python project.
        ({**npm({"test": "vitest"}), "pyproject.toml": ""}, "python -m pytest -q"),
        ({"node_modules/gyp/x.py": "", "index.js": ""}, None),
    ],
)
def test_detect_test_command(tmp_path, files, expected):
    write(tmp_path, files)
    assert detect_test_command(tmp_path) == expected
