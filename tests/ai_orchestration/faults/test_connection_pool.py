"""The PostgreSQL pool after the server dropped every connection (what a restart does).

Connections are checked as they leave the pool (CONN_HEALTH_CHECKS: Django gives
psycopg_pool `check=ConnectionPool.check_connection`), so a dead one is replaced, never
handed to a query. Run in a process of its own (pool_probe.py), whose pool holds exactly
the connections the test made: psycopg_pool finds dead idle connections one checkout at
a time, pausing 0, 1, 2, 4 … s between them, so with more than five dead ones a checkout
gives up after DB_POOL_TIMEOUT (the workers' loops absorb that: they run again)."""

import os
import subprocess
import sys

from django.db import connection

from tests.ai_orchestration.faults.procs import FAST, ROOT, database_url
from tests.conftest import on_postgres

pytestmark = [on_postgres]

IDLE = 2


def test_a_checkout_after_every_connection_was_dropped_gets_a_working_one(transactional_db):
    # given: a process with IDLE connections idle in its pool
    name = f"pool-probe-{os.getpid()}"
    env = {
        **os.environ,
        **FAST,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "topdog.settings",
        "PGAPPNAME": name,
    }
    probe = subprocess.Popen(
        [sys.executable, "-m", "tests.ai_orchestration.faults.pool_probe", str(IDLE)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert probe.stdout.readline().strip() == "ready"

        # when: the server ends every one of its connections
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                [name],
            )
            assert cursor.fetchone()[0] >= IDLE
        probe.stdin.write("go\n")
        probe.stdin.flush()

        # then: its next queries get working connections, not the dead ones
        assert probe.stdout.readline().strip() == "ok"
    finally:
        probe.kill()
        probe.wait(10)
