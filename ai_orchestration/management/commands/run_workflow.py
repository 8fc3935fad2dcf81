"""`manage.py run_workflow --project demo "Add dark mode to settings"`

Runs a whole workflow on the autopilot in this process, showing each phase as it
happens, and exits 0 when the workflow is COMPLETE (1 otherwise).
"""

import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from ai_orchestration.autopilot.items import ItemProgress
from ai_orchestration.autopilot.runner import StepProgress, autopilot_step
from ai_orchestration.autopilot.selectors import run_get
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from workflows.errors import ProjectNotFound
from workflows.models import Membership, Project, Workflow
from workflows.services import Actor, workflow_initialize


class Command(BaseCommand):
    help = "Run a feature request through all six phases on the autopilot, live."

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
            raise CommandError(
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
            raise CommandError(f"{actor.name} is not a member of {project.slug}") from exc
        self.stdout.write(f"workflow {workflow.id}  ({workflow.model_name})")
        with transaction.atomic():
            run = autopilot_start(workflow_id=workflow.id, actor=actor)
            # This process runs the steps itself; the queued task finds the run taken.
        started = time.monotonic()
        while autopilot_step(run_id=run.id, worker_id="cli", on_progress=self._progress):
            pass
        run = run_get(run_id=run.id)
        workflow = Workflow.objects.get(pk=workflow.pk)
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"\n{workflow.state}  run {run.status}  {run.input_tokens}+{run.output_tokens} "
            f"tokens  ${run.cost_usd}  {elapsed:.1f}s"
        )
        if run.status == AIRun.Status.WAITING:
            self.stdout.write(f"stopped: {run.stop_reason} (approve it in the admin or API)")
        if run.error:
            self.stderr.write(f"error: {run.error}")
        if workflow.state != "COMPLETE":
            sys.exit(1)

    def _progress(self, step: StepProgress | ItemProgress) -> None:
        if isinstance(step, ItemProgress):  # one work item of IMPLEMENTATION
            detail = f"  {step.detail}" if step.detail else ""
            self.stdout.write(f"    {step.key:<6} {step.status:<9} try {step.attempt}{detail}")
            return
        run = step.run
        self.stdout.write(
            f"  {step.phase:<15} → {step.new_state:<15} "
            f"{run.provider or '-':<10} tokens {run.input_tokens:>7}+{run.output_tokens:<7} "
            f"${run.cost_usd}"
        )

    def _user(self, project: Project, username: object) -> object:
        users = get_user_model().objects
        if username:
            user = users.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user {username!r}")
            return user
        membership = (
            Membership.objects.filter(project=project, role__in=["owner", "developer"])
            .select_related("user")
            .order_by("role", "created_at")
            .first()
        )
        if membership is None:
            raise CommandError(
                f"project {project.slug} has no owner or developer; add one with "
                f"`manage.py topdog project member {project.slug} USER --role owner`"
            )
        return membership.user
