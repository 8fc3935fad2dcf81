"""`manage.py run_workflow --project demo "Add dark mode to settings"`

Runs a whole workflow on the autopilot in this process and shows it live: the model's
text as it streams (on a terminal; elsewhere a progress line per phase now and then),
gates, regressions, sandbox checks and failures as they happen. `--json` prints one JSON
object per line instead. Exit codes: console.ExitCode (0 complete, 1 failed, 2 waiting
at a gate, 3 cancelled, 4 usage).
"""

import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandParser
from django.db import transaction

from ai_orchestration.autopilot.runner import StepHooks, autopilot_step
from ai_orchestration.autopilot.selectors import run_get
from ai_orchestration.autopilot.services import WAITING_FOR_ITEMS, autopilot_start
from ai_orchestration.management.console import (
    ExitCode,
    Follower,
    LiveCommand,
    Printer,
    usage_error,
)
from ai_orchestration.models import AIRun
from workflows.errors import ProjectNotFound
from workflows.models import Membership, Project, Workflow
from workflows.services import Actor, workflow_initialize

# How often the command looks at a run another worker holds.
FOLLOW_SECONDS = 0.2


class Command(LiveCommand):
    help = (
        "Run a feature request through all six phases on the autopilot, live. Exit codes: "
        "0 complete, 1 failed, 2 waiting at a gate, 3 cancelled, 4 usage error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("request", help="The feature request, in plain words.")
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument(
            "--model",
            choices=sorted(settings.TOPDOG_MODELS),
            default=None,
            help=f"Seed model (default {settings.TOPDOG_DEFAULT_MODEL}).",
        )
        parser.add_argument(
            "--user",
            help="Act as this user (a project member); default: the project's first owner.",
        )

    def handle(self, *args: object, **options: object) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise usage_error(
                f"no project {options['project']!r}; create one with "
                f"`manage.py topdog project add {options['project']} --name ...`"
            )
        actor = Actor.of(self._user(project, options.get("user")))
        try:
            workflow = workflow_initialize(
                project=project,
                requirements={"description": options["request"]},
                actor=actor,
                model_name=options["model"],
            )
        except ProjectNotFound as exc:
            raise usage_error(f"{actor.name} is not a member of {project.slug}") from exc
        printer = self.printer(options)
        if not options["json"]:
            printer.summary(f"workflow {workflow.id}  ({workflow.model_name})")
        with transaction.atomic():
            run = autopilot_start(workflow_id=workflow.id, actor=actor)
            # This process runs the steps itself; the queued task finds the run taken.
        code = self._follow(workflow, run, printer, json_only=options["json"])
        if code:
            raise SystemExit(code)

    def _follow(self, workflow: Workflow, run: AIRun, printer: Printer, *, json_only: bool) -> int:
        """Work the run's steps here, showing everything as it happens; the exit code."""
        follower = Follower(workflow, printer)
        hooks = StepHooks(on_delta=follower.delta, on_output=follower.output)
        started = time.monotonic()
        follower.poll()
        while self._step_or_wait(run, hooks):
            follower.poll()
        follower.poll()
        run = run_get(run_id=run.id)
        code = follower.exit_code()
        code = ExitCode.FAILED if code is None else code  # the run ended, the workflow is open
        if not json_only:
            elapsed = time.monotonic() - started
            waiting = (
                f"\nwaiting at the {workflow.state} gate: approve or reject it on the "
                f"dashboard or with POST /api/workflows/{workflow.id}/transitions/"
                if code == ExitCode.WAITING
                else ""
            )
            printer.summary(
                f"\n{workflow.state}  run {run.status}  {run.input_tokens}+{run.output_tokens} "
                f"tokens  ${run.cost_usd}  {elapsed:.1f}s  exit {int(code)}{waiting}",
                error=run.error,
            )
        return int(code)

    def _step_or_wait(self, run: AIRun, hooks: StepHooks) -> bool:
        """Work the run's next step here. A worker of a running server shares the task
        queue and may claim a step (or the work items) first: then wait for it, and go
        on with the run. False once the run has ended or waits at a gate."""
        if autopilot_step(run_id=run.id, worker_id="cli", hooks=hooks):
            return True
        current = run_get(run_id=run.id)
        waiting = current.status == AIRun.Status.WAITING
        at_gate = waiting and current.stop_reason != WAITING_FOR_ITEMS
        if not current.is_active or at_gate:
            return False
        time.sleep(FOLLOW_SECONDS)
        return True

    def _user(self, project: Project, username: object) -> object:
        users = get_user_model().objects
        if username:
            user = users.filter(username=username).first()
            if user is None:
                raise usage_error(f"no user {username!r}")
            return user
        membership = (
            Membership.objects.filter(project=project, role__in=["owner", "developer"])
            .select_related("user")
            .order_by("role", "created_at")
            .first()
        )
        if membership is None:
            raise usage_error(
                f"project {project.slug} has no owner or developer; add one with "
                f"`manage.py topdog project member {project.slug} USER --role owner`"
            )
        return membership.user
