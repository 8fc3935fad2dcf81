"""The apps' import contracts (.importlinter) and no function-local imports across apps.

The layers: ai_orchestration above workflows above integrations; topdog (project wiring)
above them all. See docs/architecture.md.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("ai_orchestration", "workflows", "integrations")
SCANNED = (*APPS, "topdog")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contracts, run over the packages in `cwd`."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--config",
            str(ROOT / ".importlinter"),
            "--no-cache",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)

    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("integrations/client.py", "import workflows.models\n"),
        ("integrations/client.py", "from django.db import models\n"),
        ("workflows/services.py", "from ai_orchestration import autopilot\n"),
        ("workflows/models.py", "def f():\n    from ai_orchestration import autopilot\n"),
        ("ai_orchestration/models.py", "from topdog import settings\n"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, source):
    """The contracts catch an upward import (even a function-local one) in a copy of the
    layout with one bad import in it."""
    for package in SCANNED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "workflows" / "models.py").write_text("import integrations\n")
    (tmp_path / "ai_orchestration" / "models.py").write_text("import workflows.models\n")
    (tmp_path / "topdog" / "settings.py").write_text("import ai_orchestration.models\n")
    bad = tmp_path / module
    bad.write_text((bad.read_text() if bad.exists() else "") + source)

    result = _lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def _function_local_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, function, module) of every import of an app nested in a function of `path`."""
    found = []
    for function in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            found += [
                (node.lineno, function.name, module)
                for module in modules
                if module.split(".")[0] in SCANNED
            ]
    return found


def _allowed(path: Path, function: str, module: str) -> bool:
    """An AppConfig.ready() may import its own app (models load only once apps are ready)."""
    app = path.relative_to(ROOT).parts[0]
    return path.name == "apps.py" and function == "ready" and module.split(".")[0] == app


def test_no_function_local_imports_of_apps():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} in {function}(): import {module}"
        for package in SCANNED
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, function, module in _function_local_imports(path)
        if not _allowed(path, function, module)
    ]

    assert not offenders, "imports of apps inside functions (import at module level):\n" + (
        "\n".join(offenders)
    )


def test_the_scan_finds_a_function_local_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    if True:\n        from workflows import services\n")

    assert _function_local_imports(module) == [(3, "f", "workflows")]
