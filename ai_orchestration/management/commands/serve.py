"""`manage.py serve`: the whole service from one command.

Applies migrations; on a database without a superuser creates `admin` (plus a `demo`
project it owns and an API token) and prints the credentials once; starts the task
worker (with Redis, `manage.py task_worker` and `autopilot_watchdog` children; on the
embedded default, the same supervised `db_worker` in this process, see
ai_orchestration/inprocess_worker.py); serves the ASGI application with daphne until
SIGINT or SIGTERM; then stops the worker.
"""

import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
import sys
import threading
from argparse import ArgumentParser, BooleanOptionalAction
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.db import IntegrityError, transaction
from django.utils.module_loading import import_string

from ai_orchestration.inprocess_worker import worker_run
from workflows.management.commands.topdog import api_token_create, validation_message
from workflows.models import Membership, Project
from workflows.services import Actor, project_create
from workflows.states import MemberRole

ADMIN_USERNAME = "admin"
DEMO_PROJECT_SLUG = "demo"


@dataclass(frozen=True)
class Bootstrap:
    """What the first run created. `password` is None when it came from the environment."""

    username: str
    password: str | None
    project_slug: str | None
    token: str | None


def bootstrap_demo(*, password: str = "", demo: bool = True) -> Bootstrap | None:
    """Create the first superuser, and with `demo` a demo project and API token.

    Does nothing (returns None) once any superuser exists, so it runs on every start.
    Two processes starting at once on an empty database race on the unique username:
    one creates everything, the other gets None.
    """
    user_model = get_user_model()
    manager = user_model._default_manager
    if manager.filter(is_superuser=True).exists():
        return None
    if manager.filter(**{user_model.USERNAME_FIELD: ADMIN_USERNAME}).exists():
        raise CommandError(
            f"there is no superuser, and a user named {ADMIN_USERNAME!r} exists that is not "
            f"one; make one with `manage.py topdog user add NAME --superuser --password-stdin`"
        )
    generated = not password
    password = password or secrets.token_urlsafe(12)
    admin = user_model(**{user_model.USERNAME_FIELD: ADMIN_USERNAME})
    try:
        validate_password(password, admin)
    except ValidationError as exc:
        raise CommandError(
            f"TOPDOG_ADMIN_PASSWORD is rejected: {validation_message(exc)}"
        ) from None
    admin.is_staff = admin.is_superuser = True
    admin.set_password(password)

    token = project_slug = None
    try:
        with transaction.atomic():
            admin.save(force_insert=True)
            if demo:
                project = Project.objects.filter(slug=DEMO_PROJECT_SLUG).first()
                if project is None:
                    project = project_create(
                        slug=DEMO_PROJECT_SLUG,
                        name="Demo",
                        actor=Actor.of(admin),
                        owner=admin,
                        regression_limit=settings.TOPDOG_DEFAULT_REGRESSION_LIMIT,
                    )
                else:
                    Membership.objects.update_or_create(
                        project=project, user=admin, defaults={"role": MemberRole.OWNER}
                    )
                _, token = api_token_create(user=admin, name="demo")
                project_slug = project.slug
    except IntegrityError:
        return None
    return Bootstrap(
        username=ADMIN_USERNAME,
        password=password if generated else None,
        project_slug=project_slug,
        token=token,
    )


def _exit_with_parent() -> None:
    """Runs in the worker between fork and exec: on Linux, die when `serve` dies.

    Covers a `serve` killed without the chance to stop its worker (SIGKILL, SIGHUP).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    # Looked up here, not in the forked child, where loading a library is unsafe.
    _libc_name = ctypes.util.find_library("c")
    if _libc_name:
        _prctl = getattr(ctypes.CDLL(_libc_name, use_errno=True), "prctl", None)


class TaskWorker:
    """`manage.py task_worker` as a child process: restarted if it dies, stopped with us.

    The child itself outlives database and Redis errors (workflows/supervision.py); this
    restarts it only if it exits for another reason.

    The child runs in its own process group, so a Ctrl+C in the terminal reaches only
    `serve`, which then sends the worker one SIGTERM: the worker finishes the task it is
    running (within `grace_seconds`) instead of being interrupted twice.
    """

    def __init__(
        self,
        *,
        out: OutputWrapper,
        command: list[str] | None = None,
        grace_seconds: float = 30.0,
        restart_delay: float = 5.0,
    ) -> None:
        self.command = command or [
            sys.executable,
            str(settings.BASE_DIR / "manage.py"),
            "task_worker",
        ]
        self.grace_seconds = grace_seconds
        self.restart_delay = restart_delay
        self._out = out
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen | None = None
        self._supervisor = threading.Thread(
            target=self._supervise, name="task-worker-supervisor", daemon=True
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._spawn()
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            env = dict(os.environ)
            if settings.SETTINGS_MODULE:  # so that `--settings` reaches the worker too
                env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
            self._process = subprocess.Popen(
                self.command,
                cwd=settings.BASE_DIR,
                env=env,
                process_group=0,
                preexec_fn=_exit_with_parent,
            )
        self._out.write(f"Task worker started (pid {self._process.pid}).")

    def _supervise(self) -> None:
        while True:
            code = self._process.wait()
            if self._stopping.is_set():
                return
            self._out.write(
                f"Task worker exited with code {code}; restarting in {self.restart_delay:g} s."
            )
            if self._stopping.wait(self.restart_delay):
                return
            self._spawn()

    def stop(self) -> None:
        """Ask the worker to finish and exit; kill it after the grace period."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        self._out.write(
            f"Stopping the task worker (up to {self.grace_seconds:g} s for its current task; "
            "Ctrl+C again to force)."
        )
        process.terminate()
        try:
            process.wait(self.grace_seconds)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self._out.write("Task worker did not stop in time; killing it.")
            process.kill()
            process.wait()


def _serve_beside_worker(server: Any, reactor: Any, *, verbosity: int) -> None:
    """Run daphne in a thread and the task worker on this, the main, thread.

    The in-memory channel layer lives in this process: so must the worker whose
    autopilot streams live frames through it. The worker is `manage.py db_worker`
    (supervised as `task_worker` runs it), which takes SIGINT and SIGTERM, and only the
    main thread may install signal handlers, so daphne (without handlers of its own) runs
    beside it. When the worker stops, daphne stops; when daphne stops by itself (it could
    not listen, say), the worker is sent a SIGTERM.
    """
    stopping, ended = threading.Event(), threading.Event()

    def serve() -> None:
        try:
            server.run()
        finally:
            if not stopping.is_set():
                ended.set()
                os.kill(os.getpid(), signal.SIGTERM)

    served = threading.Thread(target=serve, name="daphne")
    served.start()
    try:
        worker_run(verbosity=verbosity)
    except KeyboardInterrupt:
        # That SIGTERM came before the worker took the signal over; the caller tells
        # why daphne ended.
        if not ended.is_set():
            raise
    finally:
        stopping.set()
        reactor.callFromThread(reactor.stop)
        served.join()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Run TopDog: apply migrations, create the first admin (and a demo project) on an "
        "empty database, start a task worker and serve HTTP and websockets with daphne."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
        parser.add_argument(
            "--no-worker",
            action="store_false",
            dest="worker",
            help="Do not start a task worker (run `manage.py task_worker` processes yourself).",
        )
        parser.add_argument(
            "--demo",
            action=BooleanOptionalAction,
            default=True,
            help="On first run, also create a 'demo' project owned by admin and an API "
            "token (default). With --no-demo only the admin user is created.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # Outside daphne's run (it installs its own handlers), SIGTERM must unwind through
        # the `finally` that stops the worker, as Ctrl+C does.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._run(options, saved_sigint=saved[signal.SIGINT])
        except KeyboardInterrupt:
            self.stdout.write("Interrupted.")
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _run(self, options: dict[str, Any], *, saved_sigint: Any) -> None:
        host, port = options["host"], options["port"]
        shown_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
        if ":" in shown_host and not shown_host.startswith("["):
            shown_host = f"[{shown_host}]"
        base_url = f"http://{shown_host}:{port}"

        self.stdout.write("Applying database migrations…")
        call_command("migrate", interactive=False, verbosity=max(options["verbosity"] - 1, 0))
        try:
            first_run = bootstrap_demo(
                password=settings.TOPDOG_ADMIN_PASSWORD, demo=options["demo"]
            )
        except CommandError as exc:
            self.stderr.write(f"Not creating an admin user: {exc}")
            first_run = None
        self._announce(first_run, base_url)

        children = []
        in_process = options["worker"] and not settings.REDIS_URL
        if options["worker"] and not in_process:
            children = [
                TaskWorker(out=self.stdout),
                # Re-queues autopilot runs whose worker died (expired lease).
                TaskWorker(
                    out=self.stdout,
                    command=[
                        sys.executable,
                        str(settings.BASE_DIR / "manage.py"),
                        "autopilot_watchdog",
                    ],
                    grace_seconds=5,
                ),
            ]
        try:
            for child in children:
                child.start()
            self._serve(
                host=host,
                port=port,
                base_url=base_url,
                verbosity=options["verbosity"],
                in_process_worker=in_process,
            )
        except KeyboardInterrupt:
            pass
        finally:
            # Twisted leaves its handlers installed; a second Ctrl+C or SIGTERM must
            # interrupt the wait for the worker.
            signal.signal(signal.SIGINT, saved_sigint)
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
            for child in children:
                child.stop()
        self.stdout.write("TopDog stopped.")

    def _announce(self, first_run: Bootstrap | None, base_url: str) -> None:
        login = f"{base_url}/admin/"
        if first_run is None:
            self.stdout.write(f"Log in at {login}")
            return
        line = "=" * 72
        lines = [
            line,
            "TopDog first run: an admin account was created.",
            "",
            f"  Log in at   {login}",
            f"  Username    {first_run.username}",
            f"  Password    {first_run.password or '(the value of TOPDOG_ADMIN_PASSWORD)'}",
        ]
        if first_run.token:
            lines += [
                f"  API token   {first_run.token}",
                f"              (project '{first_run.project_slug}'; send it as "
                "'Authorization: Token <token>')",
            ]
        lines += [
            "",
            "Save these now: they are shown only this once and not stored in clear text.",
            line,
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))

    def _serve(
        self,
        *,
        host: str,
        port: int,
        base_url: str,
        verbosity: int,
        in_process_worker: bool = False,
    ) -> None:
        """Run daphne in this process until SIGINT or SIGTERM."""
        from daphne.access import AccessLogGenerator
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import reactor

        application = import_string(settings.ASGI_APPLICATION)
        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            # Beside an in-process worker, the worker takes the signals (see below).
            signal_handlers=not in_process_worker,
            action_logger=AccessLogGenerator(sys.stdout) if verbosity >= 1 else None,
            root_path=getattr(settings, "FORCE_SCRIPT_NAME", "") or "",
            verbosity=verbosity,
        )
        self.stdout.write(f"Serving TopDog at {base_url}/ (Ctrl+C to stop).")
        if in_process_worker:
            self.stdout.write("Task worker and autopilot watchdog run in this process.")
            _serve_beside_worker(server, reactor, verbosity=verbosity)
        else:
            server.run()
        if not server.listening_addresses:
            raise CommandError(f"could not listen on {host}:{port}; see the error above")
