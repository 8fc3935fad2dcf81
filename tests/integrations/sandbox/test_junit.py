from pathlib import Path

from integrations.sandbox.junit import CASE_TEXT_MAX_CHARS, MAX_FAILED_CASES, junit_parse

PYTEST_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="0.1">
<testcase classname="test_a" name="test_ok" time="0.001" />
<testcase classname="test_a" name="test_bad" file="test_a.py" time="0.001">
<failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase>
<testcase classname="test_a" name="test_skip"><skipped message="later" /></testcase>
<testcase classname="test_a" name="test_err"><error message="fixture broke">boom</error></testcase>
<testcase classname="test_a" name="test_ok2" />
</testsuite></testsuites>
"""

JEST_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="3" failures="1" errors="0" time="1.2">
  <testsuite name="sum" errors="0" failures="1" skipped="0" timestamp="x" time="1" tests="2">
    <testcase classname="sum adds" name="sum adds" time="0.002"></testcase>
    <testcase classname="sum fails" name="sum fails" time="0.003">
      <failure>Error: expect(received).toBe(expected)

Expected: 3
Received: 4</failure>
    </testcase>
  </testsuite>
  <testsuite name="other" errors="0" failures="0" skipped="1" tests="1">
    <testcase classname="other" name="todo"><skipped/></testcase>
  </testsuite>
</testsuites>
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "junit.xml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def test_pytest_report(tmp_path):
    report = junit_parse(write(tmp_path, PYTEST_XML))
    assert (report.tests, report.failures, report.errors, report.skipped) == (5, 1, 1, 1)
    assert [case.name for case in report.failed] == ["test_bad", "test_err"]
    bad = report.failed[0]
    assert bad.message == "assert 1 == 2"
    assert bad.classname == "test_a" and bad.file == "test_a.py"
    assert "assert 1 == 2" in bad.text


def test_jest_report_sums_suites(tmp_path):
    report = junit_parse(write(tmp_path, JEST_XML))
    assert (report.tests, report.failures, report.errors, report.skipped) == (3, 1, 0, 1)
    assert report.failed[0].message == "Error: expect(received).toBe(expected)"


def test_bare_testsuite_root_without_counts(tmp_path):
    xml = (
        '<testsuite name="x"><testcase name="a"/><testcase name="b"><failure>no</failure>'
        '</testcase><testcase name="c"><skipped/></testcase></testsuite>'
    )
    report = junit_parse(write(tmp_path, xml))
    assert (report.tests, report.failures, report.errors, report.skipped) == (3, 1, 0, 1)


def test_failed_cases_and_texts_are_capped(tmp_path):
    cases = "".join(
        f'<testcase name="t{i}"><failure message="m">{"x" * 10_000}</failure></testcase>'
        for i in range(80)
    )
    report = junit_parse(
        write(tmp_path, f'<testsuite tests="80" failures="80">{cases}</testsuite>')
    )
    assert report.failures == 80
    assert len(report.failed) == MAX_FAILED_CASES
    assert all(len(case.text) <= CASE_TEXT_MAX_CHARS for case in report.failed)


def test_entity_expansion_is_refused(tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        '<testsuite tests="1"><testcase name="&lol2;"/></testsuite>'
    )
    assert junit_parse(write(tmp_path, bomb)) is None
    external = (
        '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<testsuite tests="1"><testcase name="&x;"/></testsuite>'
    )
    assert junit_parse(write(tmp_path, external)) is None


def test_malformed_missing_big_or_foreign_files_give_none(tmp_path):
    assert junit_parse(tmp_path / "absent.xml") is None
    assert junit_parse(write(tmp_path, '<testsuite tests="1"><testcase')) is None
    assert junit_parse(write(tmp_path, "<html><body/></html>")) is None
    assert junit_parse(write(tmp_path, b"\xff\xfe not xml")) is None
    big = b'<testsuite tests="1">' + b" " * (21 * 1024**2) + b"</testsuite>"
    assert junit_parse(write(tmp_path, big)) is None
