"""The bench's pure helpers: RATIO lines, the peers' statement kinds, the vendored wheel."""

import zipfile
from io import BytesIO

from bench.peers import _statement_kind, writes_summary
from bench.report import ratio_lines
from bench.sandbox import wheel_bytes


def test_ratio_lines_default_to_the_p50_ratio_and_its_limit():
    results = {
        "targets": [
            {
                "ratio": "status_vs_floor",
                "measured": "status",
                "p50_ratio": 1.234,
                "limit_p50_ratio": 1.3,
                "passed": True,
            },
            {
                "ratio": "static_checks_20_files_ms",
                "measured": "x",
                "value": 4.5,
                "op": "<",
                "limit": 50.0,
                "passed": True,
            },
            {
                "ratio": "sandbox_vs_direct",
                "measured": "y",
                "value": 1.4,
                "op": "<=",
                "limit": 1.3,
                "passed": True,
                "note": "delta +90 ms; PASS if either holds",
            },
            {
                "ratio": "sandbox_cache_speedup",
                "measured": "z",
                "value": 3.0,
                "op": ">=",
                "limit": 5.0,
                "passed": False,
            },
        ]
    }
    assert ratio_lines(results).splitlines() == [
        "RATIO status_vs_floor 1.234 target <= 1.3 PASS",
        "RATIO static_checks_20_files_ms 4.500 target < 50 PASS",
        "RATIO sandbox_vs_direct 1.400 target <= 1.3 PASS  (delta +90 ms; PASS if either holds)",
        "RATIO sandbox_cache_speedup 3.000 target >= 5.0 MISS",
    ]


def test_statement_kinds_name_the_written_table():
    assert _statement_kind('INSERT INTO "workflows_message" ("a") VALUES (1)') == (
        "INSERT workflows_message"
    )
    assert _statement_kind('UPDATE "workflows_workflow" SET "state" = 1') == (
        "UPDATE workflows_workflow"
    )
    assert _statement_kind('SELECT "id" FROM "x" FOR UPDATE') == "SELECT"
    summary = writes_summary(
        "peer", {"statements_per_step": [5, 6], "writes_per_step": {"rows checkpoints": 1.0}}
    )
    assert summary == "peer: 5-6 SQL statements a step; writes per step: 1 rows checkpoints"


def test_the_vendored_wheel_holds_the_module_and_its_record():
    with zipfile.ZipFile(BytesIO(wheel_bytes())) as archive:
        names = set(archive.namelist())
        assert "benchpkg/__init__.py" in names
        record = archive.read("benchpkg-1.0.dist-info/RECORD").decode()
    assert "benchpkg/__init__.py,sha256=" in record
