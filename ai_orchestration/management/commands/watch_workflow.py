"""`manage.py watch_workflow WORKFLOW_ID [--after SEQ] [--json]`

Attaches to a workflow run by any process (a task worker, `run_workflow`, the IDE):
prints its events after `--after` and follows new ones, polling the database every
`--interval` seconds through the selectors, which needs no channel layer and works
across processes. Token deltas are not persisted, so a watcher sees each phase's result,
not its stream. Exits when the workflow ends, waits at a gate, or its latest autopilot
run stops without completing it (console.ExitCode: 0 complete, 1 failed, 2 waiting at a
gate, 3 cancelled, 4 usage error or unknown workflow; 130 on Ctrl+C).
"""

import time

from django.core.management.base import CommandParser

from ai_orchestration.management.console import Follower, LiveCommand, usage_error
from workflows.errors import WorkflowNotFound
from workflows.models import Workflow
from workflows.selectors import workflow_uuid

INTERRUPTED = 130


class Command(LiveCommand):
    help = (
        "Follow a workflow's events live until it ends or waits at a gate. Exit codes: "
        "0 complete, 1 failed, 2 waiting at a gate, 3 cancelled, 4 usage error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow_id", help="The workflow's id.")
        parser.add_argument(
            "--after", type=int, default=0, help="Show events after this seq (default: all)."
        )
        parser.add_argument(
            "--interval", type=float, default=0.3, help="Seconds between database polls."
        )

    def handle(self, *args: object, **options: object) -> None:
        workflow = self._workflow(options["workflow_id"])
        printer = self.printer(options)
        follower = Follower(workflow, printer, after=max(options["after"], 0))
        try:
            while True:
                follower.poll()
                code = follower.exit_code()
                if code is not None:
                    break
                time.sleep(max(options["interval"], 0.05))
        except KeyboardInterrupt:
            raise SystemExit(INTERRUPTED) from None
        if not options["json"]:
            printer.summary(f"{workflow.state}  exit {int(code)}")
        if code:
            raise SystemExit(int(code))

    def _workflow(self, workflow_id: object) -> Workflow:
        try:
            workflow = Workflow.objects.filter(pk=workflow_uuid(workflow_id)).first()
        except WorkflowNotFound:
            workflow = None
        if workflow is None:
            raise usage_error(f"no workflow {workflow_id!r}")
        return workflow
