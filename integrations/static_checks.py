"""Static checks of a change set: does each written file parse? No repository code runs.

- `.py`/`.pyi`: `ast.parse` (this interpreter's grammar, Python 3.11);
- `.json`: `json.loads`; `tsconfig*.json`, `jsconfig*.json`, `.eslintrc.json`,
  `devcontainer.json` and `.vscode/*.json` are JSON with comments and trailing commas
  (JSONC), which are dropped first;
- `.toml`: `tomllib`;
- `.yaml`/`.yml`: every document composed with PyYAML's safe loader (syntax, anchors and
  aliases; tags are not constructed, so `!Ref`-style custom tags are fine);
- `.js`/`.cjs`/`.mjs`: compiled, never run, by one long-lived `node` process per node
  binary (starting node takes ~60 ms, more than checking a whole change set): `.cjs` as
  a CommonJS function body, `.mjs` as an ES module, `.js` as either (a file with
  `import`/`export` statements that fails both is reported as a module). A module's
  error position comes from `node --check` on a temporary copy, only when one fails;
- `.ts`/`.tsx`/`.mts`/`.cts`: skipped, "no TypeScript checker".

`checked` lists the files a checker ran on; `skipped` the files of a checkable kind that
could not be checked, with the reason (no node, node timed out, TypeScript). Deleted files
and other kinds are in neither. A file nested too deeply for a parser is a problem, not a
crash.
"""

import ast
import atexit
import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import yaml

from integrations.change_set import FileChange, change_set_normalize

__all__ = ["StaticCheckReport", "StaticProblem", "static_checks_run"]

TOO_DEEP = "nested too deeply to check"
TYPESCRIPT = (".ts", ".tsx", ".mts", ".cts")
JAVASCRIPT = {".js": "either", ".cjs": "commonjs", ".mjs": "module"}
JSONC_NAME_RE = re.compile(r"(tsconfig.*|jsconfig.*|\.eslintrc|devcontainer)\.json")
JSONC_TOKEN_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|//[^\n]*|/\*.*?(?:\*/|\Z)', re.DOTALL)
TRAILING_COMMA_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|,(\s*[}\]])')
TOML_AT_RE = re.compile(r"\s*\(at line (\d+), column \d+\)$")
NODE_CHECK_LINE_RE = re.compile(r":(\d+)$")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class StaticProblem:
    path: str
    line: int | None
    message: str


@dataclass(frozen=True)
class StaticCheckReport:
    problems: tuple[StaticProblem, ...]
    checked: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- in-process checkers: text -> [(line, message)] ---------------------------------------

Found = list[tuple[int | None, str]]


def _python(path: str, text: str) -> Found:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(text, filename=path)
    except SyntaxError as exc:  # and IndentationError, TabError
        return [(exc.lineno, exc.msg)]
    except ValueError as exc:  # a NUL byte
        return [(None, str(exc))]
    return []


def _json_text(path: str, text: str) -> str:
    """`text`, without comments and trailing commas when `path` is a JSONC file."""
    name = path.rsplit("/", 1)[-1]
    if not (JSONC_NAME_RE.fullmatch(name) or path.startswith(".vscode/") or "/.vscode/" in path):
        return text

    def blank(match: re.Match) -> str:  # keep strings; a comment keeps its line breaks
        token = match.group(0)
        return token if token.startswith('"') else "\n" * token.count("\n")

    text = JSONC_TOKEN_RE.sub(blank, text)
    return TRAILING_COMMA_RE.sub(lambda m: m.group(0) if m.group(1) is None else m.group(1), text)


def _json(path: str, text: str) -> Found:
    try:
        json.loads(_json_text(path, text))
    except json.JSONDecodeError as exc:
        return [(exc.lineno, exc.msg)]
    return []


def _toml(path: str, text: str) -> Found:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = TOML_AT_RE.search(message)
        return [(int(at.group(1)), message[: at.start()])] if at else [(None, message)]
    return []


def _yaml(path: str, text: str) -> Found:
    try:
        for _ in yaml.compose_all(text, Loader=YAML_LOADER):
            pass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        return [(mark.line + 1 if mark else None, message or "invalid YAML")]
    except yaml.YAMLError as exc:
        return [(None, str(exc))]
    return []


CHECKERS: dict[str, Callable[[str, str], Found]] = {
    ".py": _python,
    ".pyi": _python,
    ".json": _json,
    ".toml": _toml,
    ".yaml": _yaml,
    ".yml": _yaml,
}


def _in_process(path: str, text: str, checker: Callable[[str, str], Found]) -> Found:
    try:
        return checker(path, text)
    except (RecursionError, MemoryError):
        return [(None, TOO_DEEP)]


# --- JavaScript through one long-lived node process ----------------------------------------

# Reads one JSON line per request ([{kind, source}]) and answers one JSON line: per file,
# null or {line, message, module}. It compiles; nothing it is given runs.
NODE_SCRIPT = r"""
const vm = require("vm");
const PARAMS = ["exports", "require", "module", "__filename", "__dirname"];
const MODULE_SYNTAX = /^\s*(import\s*[\w{*'"]|export\s)/m;
function failure(e, module) {
  const first = String((e && e.stack) || "").split("\n", 1)[0];
  const at = /^file:(\d+)$/.exec(first);
  const name = e && e.name ? e.name + ": " : "";
  return {line: at ? Number(at[1]) : null, message: name + String(e && e.message), module};
}
function asScript(src) {
  try { vm.compileFunction(src, PARAMS, {filename: "file"}); return null; }
  catch (e) { return failure(e, false); }
}
function asModule(src) {
  try { new vm.SourceTextModule(src, {identifier: "file"}); return null; }
  catch (e) { return failure(e, true); }
}
function check(file) {
  if (file.kind === "module") return asModule(file.source);
  const script = asScript(file.source);
  if (script === null || file.kind === "commonjs") return script;
  const module = asModule(file.source);
  if (module === null) return null;
  return MODULE_SYNTAX.test(file.source) ? module : script;
}
let chunks = [];
process.stdin.on("data", (chunk) => {
  let nl;
  while ((nl = chunk.indexOf(10)) >= 0) {
    chunks.push(chunk.subarray(0, nl));
    chunk = chunk.subarray(nl + 1);
    const files = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    chunks = [];
    process.stdout.write(JSON.stringify(files.map(check)) + "\n");
  }
  if (chunk.length) chunks.push(chunk);
});
"""


class _NodeFailed(Exception):
    pass


class _NodeWorker:
    """One `node` that compiles JavaScript on request; owned by the process that made it."""

    def __init__(self, node: str):
        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [node, "--experimental-vm-modules", "--no-warnings", "-e", NODE_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd="/",
            bufsize=0,
        )
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.proc.poll() is None

    def ask(self, request: bytes, deadline: float) -> bytes:
        """Send one request line and read the one answer line before `deadline`."""
        pending = memoryview(request)
        answer = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdin.fileno(), selectors.EVENT_WRITE)
            selector.register(self.proc.stdout.fileno(), selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                for key, _ in selector.select(remaining):
                    if key.events & selectors.EVENT_WRITE:
                        try:
                            pending = pending[os.write(key.fd, pending[:65536]) :]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            raise _NodeFailed("node exited") from None
                        if not pending:
                            selector.unregister(key.fd)
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        raise _NodeFailed("node exited")
                    answer.append(chunk)
                    if b"\n" in chunk:
                        return b"".join(answer).split(b"\n", 1)[0]

    def close(self) -> None:
        if self.pid == os.getpid() and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_workers: dict[str, _NodeWorker] = {}
_workers_lock = threading.Lock()


@atexit.register
def _workers_close() -> None:
    for worker in _workers.values():
        worker.close()


def _node_compile(node: str, files: list[tuple[str, str]], timeout: float) -> list[dict | None]:
    """Per file (kind, source): None when it compiles, else {line, message, module}."""
    request = json.dumps([{"kind": kind, "source": source} for kind, source in files]) + "\n"
    deadline = time.monotonic() + timeout
    with _workers_lock:
        worker = _workers.get(node)
        if worker is None or not worker.alive():
            worker = _workers[node] = _NodeWorker(node)
        try:
            results = json.loads(worker.ask(request.encode(), deadline))
            if not isinstance(results, list) or len(results) != len(files):
                raise _NodeFailed("node answered out of turn")
            return results
        except BaseException:
            worker.close()
            del _workers[node]
            raise


def _module_error_line(node: str, source: str, timeout: float) -> int | None:
    """The line `node --check` names for a module that does not compile."""
    with tempfile.TemporaryDirectory(prefix="topdog-check-") as scratch:
        copy = os.path.join(scratch, "file.mjs")
        with open(copy, "w", encoding="utf-8") as handle:
            handle.write(source)
        try:
            done = subprocess.run(
                [node, "--check", copy],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                cwd=scratch,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
    first = done.stderr.split("\n", 1)[0]
    found = NODE_CHECK_LINE_RE.search(first) if first.startswith(copy) else None
    return int(found.group(1)) if found else None


def _javascript(
    node: str | None, files: list[FileChange], timeout: float
) -> tuple[list[StaticProblem], list[str], list[tuple[str, str]]]:
    if not files:
        return [], [], []
    binary = shutil.which(node) if node else None
    if binary is None:
        return [], [], [(f.path, "node not found") for f in files]
    kinds = [JAVASCRIPT[os.path.splitext(f.path)[1].lower()] for f in files]
    try:
        sources = [(kind, f.content) for kind, f in zip(kinds, files, strict=True)]
        results = _node_compile(binary, sources, timeout)
    except TimeoutError:
        return [], [], [(f.path, f"node took longer than {timeout:g} s") for f in files]
    except (OSError, ValueError, _NodeFailed) as exc:
        return [], [], [(f.path, f"node failed: {exc}") for f in files]
    problems = []
    for change, result in zip(files, results, strict=True):
        if result is None:
            continue
        line = result["line"]
        if line is None and result["module"]:
            line = _module_error_line(binary, change.content, timeout)
        problems.append(StaticProblem(path=change.path, line=line, message=result["message"]))
    return problems, [f.path for f in files], []


# --- the report ----------------------------------------------------------------------------


def static_checks_run(
    files: Iterable[Mapping | FileChange],
    *,
    node: str | None = "node",
    timeout_seconds: float = 10,
) -> StaticCheckReport:
    """Parse every file the change set writes, by its extension (see the module doc).
    `node` is the node command or path (None: JavaScript is skipped); `timeout_seconds`
    bounds node's part."""
    items = list(files)
    changes = change_set_normalize(items) if items else ()
    problems: list[StaticProblem] = []
    checked: list[str] = []
    skipped: list[tuple[str, str]] = []
    scripts = []
    for change in changes:
        if change.action == "delete":
            continue
        extension = os.path.splitext(change.path)[1].lower()
        checker = CHECKERS.get(extension)
        if checker is not None:
            for line, message in _in_process(change.path, change.content, checker):
                problems.append(StaticProblem(path=change.path, line=line, message=message))
            checked.append(change.path)
        elif extension in JAVASCRIPT:
            scripts.append(change)
        elif extension in TYPESCRIPT:
            skipped.append((change.path, "no TypeScript checker"))
    js_problems, js_checked, js_skipped = _javascript(node, scripts, timeout_seconds)
    order = {change.path: index for index, change in enumerate(changes)}
    return StaticCheckReport(
        problems=tuple(sorted(problems + js_problems, key=lambda p: order[p.path])),
        checked=tuple(sorted(checked + js_checked, key=order.__getitem__)),
        skipped=tuple(sorted(skipped + js_skipped, key=lambda s: order[s[0]])),
    )
