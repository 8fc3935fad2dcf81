"""Reading JUnit XML reports (pytest `--junitxml`, jest-junit) written by sandboxed runs.

The file comes from code TopDog does not trust, so it is read defensively: at most
`JUNIT_MAX_BYTES`, and any DOCTYPE or ENTITY declaration is refused before parsing (no
entity expansion, no external entities). A file that is missing, too big, hostile or
malformed gives None: no partial report. Counts are summed over every <testsuite>;
failed cases are kept up to `MAX_FAILED_CASES`, each text up to `CASE_TEXT_MAX_CHARS`.
"""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FailedCase", "JUnitReport", "junit_parse"]

JUNIT_MAX_BYTES = 20 * 1024**2
MAX_FAILED_CASES = 50
CASE_TEXT_MAX_CHARS = 4096
CASE_MESSAGE_MAX_CHARS = 1024
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True)
class FailedCase:
    name: str
    classname: str
    file: str
    message: str
    text: str


@dataclass(frozen=True)
class JUnitReport:
    tests: int
    failures: int
    errors: int
    skipped: int
    failed: tuple[FailedCase, ...]


def _count(element: ET.Element, name: str) -> int:
    try:
        return max(0, int(float(element.get(name) or 0)))
    except ValueError:
        return 0


def _failed_case(case: ET.Element, problem: ET.Element) -> FailedCase:
    text = (problem.text or "").strip()
    if len(text) > CASE_TEXT_MAX_CHARS:
        marker = "\n[text truncated]"
        text = text[: CASE_TEXT_MAX_CHARS - len(marker)] + marker
    message = (problem.get("message") or "").strip() or text.partition("\n")[0]
    return FailedCase(
        name=case.get("name", ""),
        classname=case.get("classname", ""),
        file=case.get("file", ""),
        message=message[:CASE_MESSAGE_MAX_CHARS],
        text=text,
    )


def junit_parse(path: Path) -> JUnitReport | None:
    """The report in the JUnit XML at `path`, or None when it is absent, over the size cap,
    declares a DOCTYPE or entities, or is not a JUnit report."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(JUNIT_MAX_BYTES + 1)
    except OSError:
        return None
    if len(raw) > JUNIT_MAX_BYTES or _DECLARATION.search(raw):
        return None
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, ValueError):
        return None
    if root.tag == "testsuite":
        suites = [root]
    elif root.tag == "testsuites":
        suites = list(root.iter("testsuite"))
    else:
        return None
    tests = failures = errors = skipped = 0
    failed: list[FailedCase] = []
    for suite in suites:
        # A nested suite's cases are counted by the suite that holds them directly.
        cases = suite.findall("testcase")
        if suite.get("tests") is not None:
            tests += _count(suite, "tests")
            failures += _count(suite, "failures")
            errors += _count(suite, "errors")
            skipped += _count(suite, "skipped") or _count(suite, "disabled")
        else:
            tests += len(cases)
            failures += sum(1 for case in cases if case.find("failure") is not None)
            errors += sum(1 for case in cases if case.find("error") is not None)
            skipped += sum(1 for case in cases if case.find("skipped") is not None)
        for case in cases:
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None and len(failed) < MAX_FAILED_CASES:
                failed.append(_failed_case(case, problem))
    return JUnitReport(tests, failures, errors, skipped, tuple(failed))
