import os
import shutil

import pytest
from channels.layers import channel_layers
from django.core.cache import cache
from django.db import connection, connections
from rest_framework.test import APIClient

from integrations.sandbox.bubblewrap import BubblewrapBackend
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, api_token_for

on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (run with DATABASE_URL)"
)


@pytest.fixture(autouse=True)
def _fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _sandbox_off(settings):
    """Tests run no sandbox unless they ask for one (tests/workflows/checks/ do)."""
    settings.TOPDOG_SANDBOX = "off"


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer instance: the in-memory one keeps groups in
    memory, and a Redis one is bound to the event loop of the test that first used it (a
    later test's loop would wait forever on its receive when it closes)."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the cache; every test starts with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(db):
    return UserFactory(username="alice")


@pytest.fixture
def project(db, user):
    project = ProjectFactory(slug="demo")
    MembershipFactory(project=project, user=user)
    return project


@pytest.fixture
def stranger(db):
    return UserFactory(username="mallory")


@pytest.fixture
def api(user):
    """An API client authenticated as `user` with a real API token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(user)}")
    return client


@pytest.fixture
def stranger_api(stranger):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(stranger)}")
    return client


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Close pooled connections before the test database is dropped (else DROP fails)."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            # Worker threads of async tests keep their own connections open; end them.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        for conn in connections.all():
            conn.close()
            if getattr(conn, "pool", None) is not None:
                conn.close_pool()


# --- the sandbox: real bubblewrap, skipped only where it cannot run (never in CI) -------


def _bubblewrap_works() -> tuple[bool, str]:
    if shutil.which("bwrap") is None:
        return False, "bwrap is not installed"
    return BubblewrapBackend().available()


@pytest.fixture
def sandbox(settings, tmp_path):
    """The bubblewrap sandbox, with workspaces under the test's own directory."""
    works, reason = _bubblewrap_works()
    if not works:
        if os.environ.get("TOPDOG_REQUIRE_SANDBOX"):
            pytest.fail(f"TOPDOG_REQUIRE_SANDBOX is set but bubblewrap does not work: {reason}")
        pytest.skip(f"bubblewrap does not work here: {reason}")
    settings.TOPDOG_SANDBOX = "bubblewrap"
    settings.TOPDOG_WORKSPACE_DIR = tmp_path / "workspaces"
    settings.TOPDOG_SANDBOX_LIMITS = {
        **settings.TOPDOG_SANDBOX_LIMITS,
        "wall_seconds": 60,
        "memory_bytes": 1024**3,
    }
    return settings


@pytest.fixture
def no_repository(project):
    """The project has no repository: checks start from an empty tree."""
    project.repository = ""
    project.git_remote_url = ""
    project.save()
    return project
