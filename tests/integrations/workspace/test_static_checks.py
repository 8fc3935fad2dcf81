import shutil

import pytest

from bench.static_checks import change_set
from integrations.static_checks import StaticProblem, static_checks_run

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def one(path: str, content: str, **options):
    return static_checks_run([{"path": path, "action": "create", "content": content}], **options)


GOOD = {
    "app.py": "def f(x: int) -> int:\n    return x + 1\n",
    "types.pyi": "def f(x: int) -> int: ...\n",
    "data.json": '{"a": [1, 2, {"b": null}]}',
    "tsconfig.json": '{\n  // comment\n  "compilerOptions": {"outDir": "http://x/y", },\n}\n',
    ".vscode/settings.json": '{/* block */ "editor.tabSize": 2,}',
    "pyproject.toml": '[project]\nname = "x"\n',
    "ci.yml": "jobs:\n  test:\n    steps: [a, b]\n",
    "stack.yaml": "a: !Ref Foo\n---\nb: &x 1\nc: *x\n",
}
BAD = {
    "app.py": ("x = 1\ndef f(:\n    pass\n", 2, "invalid syntax"),
    "tabs.py": ("if x:\n\tpass\n        pass\n", 3, "inconsistent use of tabs"),
    "data.json": ('{\n  "a": 1,\n}', 3, "Expecting property name"),
    "tsconfig.json": ('{\n  // ok\n  "a": 1\n  "b": 2\n}', 4, "Expecting ','"),
    "pyproject.toml": ("[project]\nname = \n", 2, "Invalid value"),
    "ci.yml": ("a: 1\n b: 2\n", 2, "mapping values are not allowed"),
    "two.yaml": ("a: 1\n---\n- [x\n", 4, "expected ',' or ']'"),
}


@pytest.mark.parametrize("path", GOOD)
def test_good_files_pass(path):
    report = one(path, GOOD[path])
    assert report.ok and report.checked == (path,) and report.skipped == ()


@pytest.mark.parametrize("path", BAD)
def test_bad_files_are_reported_with_their_line(path):
    content, line, message = BAD[path]
    [problem] = one(path, content).problems
    assert (problem.path, problem.line) == (path, line)
    assert message in problem.message


@pytest.mark.parametrize(
    "path, content",
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000),
        ("deep.py", "x = " + "-" * 100_000 + "1\n"),
        ("deep2.py", "x = a" + ".b" * 100_000 + "\n"),
        ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000),
        ("deep.yaml", "[" * 100_000 + "]" * 100_000),
    ],
)
def test_deep_nesting_is_a_problem_not_a_crash(path, content):
    [problem] = one(path, content).problems
    assert problem.path == path


def test_deleted_and_other_files_are_not_checked():
    report = static_checks_run(
        [
            {"path": "gone.py", "action": "delete"},
            {"path": "README.md", "action": "create", "content": "def f(:"},
            {"path": "x.ts", "action": "create", "content": "let a: number = 1;"},
            {"path": "y.tsx", "action": "create", "content": "<A/>"},
        ]
    )
    assert report.ok and report.checked == ()
    assert report.skipped == (("x.ts", "no TypeScript checker"), ("y.tsx", "no TypeScript checker"))
    assert static_checks_run([]).checked == ()


@pytest.mark.parametrize("node", [None, "/nonexistent/node"])
def test_without_node_javascript_is_skipped(node):
    report = static_checks_run(
        [
            {"path": "a.js", "action": "create", "content": "function (\n"},
            {"path": "b.py", "action": "create", "content": "x = 1\n"},
        ],
        node=node,
    )
    assert report.ok and report.checked == ("b.py",)
    assert report.skipped == (("a.js", "node not found"),)


JS_GOOD = {
    "script.js": "const a = require('a');\nreturn a;\n",  # CommonJS allows a top-level return
    "module.js": "import x from 'y';\nexport const z = await x;\n",
    "module.mjs": "export default 1;\n",
    "common.cjs": "#!/usr/bin/env node\nmodule.exports = 1;\n",
}
JS_BAD = {
    "script.js": ("const a = 1;\n\nfunction (\n", 3, "function name"),
    "module.js": ("import x from 'y';\nexport const z = ;\n", 2, "Unexpected token ';'"),
    "module.mjs": ("export const a = 1;\nexport const a = 2;\n", 2, "already been declared"),
    "common.cjs": ("export default 1;\n", 1, "Unexpected token 'export'"),
}


@needs_node
def test_javascript_is_compiled_by_node():
    files = [{"path": p, "action": "create", "content": c} for p, c in JS_GOOD.items()]
    report = static_checks_run(files)
    assert report.ok and report.checked == tuple(JS_GOOD)

    files = [{"path": p, "action": "create", "content": c} for p, (c, _, _) in JS_BAD.items()]
    report = static_checks_run(files)
    assert [(p.path, p.line) for p in report.problems] == [
        (path, line) for path, (_, line, _) in JS_BAD.items()
    ]
    for problem in report.problems:
        assert JS_BAD[problem.path][2] in problem.message


@needs_node
def test_javascript_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    source = f"require('fs').writeFileSync({str(marker)!r}, 'x');\n"
    for path in ("a.js", "b.cjs"):
        assert one(path, source).ok
    assert one("c.mjs", f"import fs from 'fs';\nfs.writeFileSync({str(marker)!r}, 'x');\n").ok
    assert not marker.exists()


@needs_node
def test_deeply_nested_javascript_is_a_problem():
    [problem] = one("deep.js", "[" * 100_000).problems
    assert problem == StaticProblem("deep.js", None, "RangeError: Maximum call stack size exceeded")


@needs_node
def test_a_timed_out_node_skips_javascript_and_the_next_call_recovers():
    report = one("a.js", "const a = 1;\n", timeout_seconds=0)
    assert report.skipped == (("a.js", "node took longer than 0 s"),)
    assert one("a.js", "const a = 1;\n").checked == ("a.js",)


def test_the_bench_change_set_checks_clean():
    files = change_set()
    report = static_checks_run(files, node=None)
    assert len(files) == 20 and report.ok
