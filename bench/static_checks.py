"""Static checks: `static_checks_run` on a 20-file change set (Python, JSON, TOML, YAML and
JavaScript, all valid), as the implementation phase checks a change set.

Times `runs` calls after one warm-up call (which starts the long-lived node process, as
the first check after a server starts does) and reports p50/p90/max in milliseconds.
Needs no database. Target: p50 < 50 ms.
"""

import json
import statistics
import time

from integrations.static_checks import static_checks_run

_PY = '''"""Views of the settings page."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Theme:
    name: str
    dark: bool = False


def theme_for(user, default: str = "system") -> Theme:
    value = user.preferences.get("theme", default)
    return Theme(name=value, dark=value == "dark")
'''
_JS = """import { useEffect, useState } from "react";

export function useTheme() {
  const [theme, setTheme] = useState(() => localStorage.getItem("theme") ?? "system");
  useEffect(() => {
    document.body.classList.toggle("dark", theme === "dark");
  }, [theme]);
  return [theme, setTheme];
}
"""
_CJS = """const path = require("path");

module.exports = function resolve(name) {
  return path.join(__dirname, "themes", `${name}.json`);
};
"""
_YAML = """name: ci
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: python -m pytest -q
"""
_TOML = """[project]
name = "shop"
version = "0.1.0"
dependencies = ["Django>=5.2", "requests==2.32"]

[tool.ruff]
line-length = 100
"""


def change_set() -> list[dict]:
    """20 files: 8 Python, 4 JSON, 2 TOML, 2 YAML, 4 JavaScript."""
    files = [(f"shop/views_{i}.py", _PY) for i in range(8)]
    files += [
        (f"web/data_{i}.json", json.dumps({"themes": ["light", "dark"], "i": i}, indent=2))
        for i in range(4)
    ]
    files += [("pyproject.toml", _TOML), ("tools/ruff.toml", _TOML)]
    files += [(".github/workflows/ci.yml", _YAML), ("deploy/app.yaml", _YAML)]
    files += [(f"web/src/theme_{i}.js", _JS) for i in range(3)] + [("web/resolve.cjs", _CJS)]
    return [{"path": path, "action": "create", "content": text} for path, text in files]


def bench_static_checks(*, runs: int = 21) -> dict:
    files = change_set()
    report = static_checks_run(files)
    if not report.ok or report.skipped:
        raise RuntimeError(f"the bench change set must check clean: {report}")
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        static_checks_run(files)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {
        "files": len(files),
        "runs": runs,
        "p50_ms": round(statistics.median(timings), 2),
        "p90_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.9))], 2),
        "max_ms": round(timings[-1], 2),
    }
