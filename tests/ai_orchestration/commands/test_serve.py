"""`manage.py serve` (everything but the daphne server itself): the first-run bootstrap and
the task worker child."""

import io
import signal
import sys
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper

from ai_orchestration.management.commands import serve
from ai_orchestration.management.commands.serve import TaskWorker, bootstrap_demo
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from workflows.models import ApiToken, Membership, Project
from workflows.states import MemberRole

User = get_user_model()


# --- serve: first-run bootstrap -----------------------------------------------------------


def test_bootstrap_demo_creates_admin_project_and_token(db):
    first = bootstrap_demo()

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(first.password)
    assert len(first.password) >= 12
    project = Project.objects.get(slug=first.project_slug)
    assert Membership.objects.get(project=project, user=admin).role == MemberRole.OWNER
    token = ApiToken.objects.get(user=admin)
    assert token.digest == ApiToken.digest_of(first.token)


def test_bootstrap_demo_runs_only_once(db):
    bootstrap_demo()

    assert bootstrap_demo() is None
    assert User.objects.filter(is_superuser=True).count() == 1
    assert ApiToken.objects.count() == 1


def test_bootstrap_demo_does_nothing_when_a_superuser_exists(db):
    UserFactory(username="root", is_superuser=True, is_staff=True)

    assert bootstrap_demo() is None
    assert not User.objects.filter(username="admin").exists()
    assert not Project.objects.exists()


def test_bootstrap_demo_uses_the_given_password_without_echoing_it(db):
    first = bootstrap_demo(password="from-the-environment")

    assert first.password is None
    assert User.objects.get(username="admin").check_password("from-the-environment")


def test_bootstrap_demo_rejects_a_weak_given_password(db):
    with pytest.raises(CommandError, match="TOPDOG_ADMIN_PASSWORD is rejected"):
        bootstrap_demo(password="short")

    assert not User.objects.exists()


def test_bootstrap_demo_without_demo_creates_only_the_admin(db):
    first = bootstrap_demo(demo=False)

    assert first.token is None and first.project_slug is None
    assert User.objects.filter(username="admin", is_superuser=True).exists()
    assert not Project.objects.exists()
    assert not ApiToken.objects.exists()


def test_bootstrap_demo_joins_an_existing_demo_project(db):
    project = ProjectFactory(slug="demo")
    MembershipFactory(project=project, user=UserFactory(username="alice"))

    bootstrap_demo()

    assert set(project.memberships.values_list("user__username", "role")) == {
        ("alice", MemberRole.OWNER),
        ("admin", MemberRole.OWNER),
    }


def test_bootstrap_demo_refuses_to_take_over_a_plain_admin_user(db):
    UserFactory(username="admin")

    with pytest.raises(CommandError, match="--superuser"):
        bootstrap_demo()

    assert not User.objects.get(username="admin").is_superuser


@pytest.fixture
def serve_without_daphne(monkeypatch):
    """`manage.py serve` minus daphne, and minus `migrate` (the test database is migrated)."""
    served, commands = [], []
    monkeypatch.setattr(serve.Command, "_serve", lambda self, **kwargs: served.append(kwargs))
    monkeypatch.setattr(serve, "call_command", lambda name, **kwargs: commands.append(name))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield served
    assert commands == ["migrate"] * len(served)
    # serve puts back the signal handlers it found
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def run_serve(*args: str) -> str:
    out = io.StringIO()
    call_command("serve", "--no-worker", *args, stdout=out, stderr=io.StringIO(), no_color=True)
    return out.getvalue()


def test_serve_prints_the_first_run_credentials_once(db, serve_without_daphne):
    first = run_serve("--port", "8123")
    second = run_serve("--port", "8123")

    token = ApiToken.objects.get()
    assert "http://127.0.0.1:8123/admin/" in first
    raw = next(w for w in first.split() if w.startswith(ApiToken.PREFIX))
    assert token.digest == ApiToken.digest_of(raw)
    assert "Password" in first
    assert raw not in second and "Password" not in second
    assert "http://127.0.0.1:8123/admin/" in second
    assert (
        serve_without_daphne
        == [
            {
                "host": "127.0.0.1",
                "port": 8123,
                "base_url": "http://127.0.0.1:8123",
                "verbosity": 1,
                "in_process_worker": False,
            }
        ]
        * 2
    )


def test_serve_no_demo_skips_the_project_and_token(db, serve_without_daphne):
    out = run_serve("--no-demo", "--host", "0.0.0.0")

    assert not Project.objects.exists()
    assert "API token" not in out
    assert "http://127.0.0.1:8000/admin/" in out


# --- serve: the task worker child -----------------------------------------------------------


def _sleeper(seconds: float = 60) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_task_worker_stops_its_process():
    worker = TaskWorker(out=OutputWrapper(io.StringIO()), command=_sleeper(), grace_seconds=5)
    worker.start()
    process = worker._process

    worker.stop()

    assert process.poll() is not None


def test_task_worker_restarts_a_worker_that_died():
    out = io.StringIO()
    worker = TaskWorker(out=OutputWrapper(out), command=_sleeper(0.1), restart_delay=0.05)
    worker.start()
    first_pid = worker.pid
    try:
        _wait_until(lambda: worker.pid != first_pid)
    finally:
        worker.stop()

    assert "restarting" in out.getvalue()
