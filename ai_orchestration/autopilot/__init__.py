"""The autopilot: the service itself works a workflow through its phases.

A run advances one phase per task on the Tasks queue: build the same prompt the API
serves, call the provider (streaming `ai.delta` frames to the workflow's websocket),
validate the evidence (one retry with the errors fed back), and complete the phase
through the same service the API uses. Then it enqueues the next phase, or stops: at an
approval gate (resumed by approve/reject), at the budget cap, on cancel, or at the end.

- services.py: start, cancel, resume at a gate, stop with the workflow, the reaper.
- tasks.py: the task on the queue.
- runner.py: claim, working a phase (fenced by the lease token), the model call loop.
- lease.py: the lease heartbeat shared by runs and work items, and the calls' cancel check.
- items.py: IMPLEMENTATION item by item.
- frames.py: `ai.run` and `ai.delta` frames.
- selectors.py: reads of runs.
"""

from ai_orchestration.autopilot.frames import run_summary
from ai_orchestration.autopilot.runner import StepProgress, autopilot_step
from ai_orchestration.autopilot.services import (
    RunConflict,
    autopilot_cancel,
    autopilot_reap,
    autopilot_resume_after_approval,
    autopilot_start,
    autopilot_stop_for_workflow,
)

# Task rows queued before the package existed name `ai_orchestration.autopilot.
# autopilot_run_task`; django_tasks resolves that path with import_string.
from ai_orchestration.autopilot.tasks import autopilot_run_task

__all__ = [
    "RunConflict",
    "StepProgress",
    "autopilot_cancel",
    "autopilot_reap",
    "autopilot_resume_after_approval",
    "autopilot_run_task",
    "autopilot_start",
    "autopilot_step",
    "autopilot_stop_for_workflow",
    "run_summary",
]
