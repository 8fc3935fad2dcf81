"""What `run_workflow` and `watch_workflow` show: a workflow's events and live frames,
as lines for people or as JSON lines for programs, and the exit code they end with.

Persisted events are read from the database after a seq (`workflows.selectors`), so a
watcher in another process sees what a worker wrote; runs are read the same way and
shown as `ai.run` frames when they change. Token deltas and sandbox output reach the
printer in-process, from the runner's hooks (`StepHooks`).

On a terminal the model's text streams as it comes; elsewhere (a pipe, a file, CI) each
phase gets a compact progress line now and then, and no ANSI escapes are written.
"""

import json
import os
import time
from enum import IntEnum
from functools import partial
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from ai_orchestration.autopilot.frames import run_summary
from ai_orchestration.autopilot.selectors import run_list_for_workflow
from ai_orchestration.models import AIRun
from workflows import selectors
from workflows.broadcast import event_frame
from workflows.models import Workflow
from workflows.states import EventType, HandoffKind, State


class ExitCode(IntEnum):
    """How `run_workflow` and `watch_workflow` end (README: the CLI)."""

    COMPLETE = 0
    FAILED = 1  # the workflow failed, or its autopilot run failed or hit the budget
    WAITING = 2  # waiting at an approval gate
    CANCELLED = 3  # the workflow or its run was cancelled
    USAGE = 4  # bad arguments, unknown project, workflow or user


def exit_code_for(workflow: Workflow, run: AIRun | None) -> ExitCode | None:
    """The exit code for the workflow and its latest run as they are; None: still going."""
    if workflow.state == State.COMPLETE:
        return ExitCode.COMPLETE
    if workflow.state == State.FAILED:
        return ExitCode.FAILED
    if workflow.state == State.CANCELLED:
        return ExitCode.CANCELLED
    if workflow.awaiting_approval:
        return ExitCode.WAITING
    if run is None or run.is_active or run.status == AIRun.Status.COMPLETED:
        return None
    if run.status == AIRun.Status.CANCELLED:
        return ExitCode.CANCELLED
    return ExitCode.FAILED  # failed, or stopped by the budget


def usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=ExitCode.USAGE)


class LiveCommand(BaseCommand):
    """A command that shows a workflow live; bad arguments exit with ExitCode.USAGE."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # argparse's own exit status for bad arguments (2) would read as "waiting".
        parser.error = partial(_parser_error, parser)
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON object per line: the persisted events' frames and the "
            "ai.delta, ai.run and check.output frames, as the websocket sends them.",
        )
        return parser

    def printer(self, options: dict) -> "Printer":
        if options["json"]:
            return JsonPrinter(self.stdout)
        tty = self.stdout.isatty()
        colour = tty and not options.get("no_color") and not os.environ.get("NO_COLOR")
        return HumanPrinter(self.stdout, self.stderr, tty=tty, colour=colour)


def _parser_error(parser: CommandParser, message: str) -> NoReturn:
    if parser.called_from_command_line:
        parser.print_usage()
        parser.exit(ExitCode.USAGE, f"{parser.prog}: error: {message}\n")
    raise usage_error(f"Error: {message}")


# --- following a workflow in the database ------------------------------------------------


class Follower:
    """Reads the workflow's new events and changed runs and hands them to a printer.

    `poll()` reads at once; `poll_if_due()` at most every `interval` seconds (it is
    called from the runner's hooks, many times a second)."""

    def __init__(self, workflow: Workflow, printer: "Printer", *, after: int = 0, interval=0.3):
        self.workflow = workflow
        self.printer = printer
        self.after = after
        self.interval = interval
        self.polled = 0.0
        self.runs: dict[str, dict] = {}
        self.latest_run: AIRun | None = None

    def poll_if_due(self) -> None:
        if time.monotonic() - self.polled >= self.interval:
            self.poll()

    def delta(self, frame: dict) -> None:
        """The runner's `on_delta` hook: events that came first, then the tokens."""
        self.poll_if_due()
        self.printer.delta(frame)

    def output(self, frame: dict) -> None:
        """The runner's `on_output` hook: events that came first, then the output lines."""
        self.poll_if_due()
        self.printer.output(frame)

    def poll(self) -> None:
        self.polled = time.monotonic()
        for event in selectors.workflow_events(workflow=self.workflow, after=self.after):
            self.printer.event(event_frame(event))
            self.after = event.seq
        runs = list(run_list_for_workflow(workflow=self.workflow).order_by("created_at", "id"))
        for run in runs:
            summary = run_summary(run)
            if self.runs.get(summary["id"]) != summary:
                self.runs[summary["id"]] = summary
                frame = {"type": "ai.run", "workflow_id": summary["workflow_id"], "run": summary}
                self.printer.run(frame)
        self.latest_run = runs[-1] if runs else None
        self.workflow.refresh_from_db()

    def exit_code(self) -> ExitCode | None:
        return exit_code_for(self.workflow, self.latest_run)


# --- printers ----------------------------------------------------------------------------


class Printer:
    """Where frames go. Every method gets the frame the websocket would send."""

    def event(self, frame: dict) -> None: ...
    def run(self, frame: dict) -> None: ...
    def delta(self, frame: dict) -> None: ...
    def output(self, frame: dict) -> None: ...
    def summary(self, text: str, *, error: str = "") -> None: ...


class JsonPrinter(Printer):
    """One JSON object per line, nothing else on stdout."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def _write(self, frame: dict) -> None:
        self.out.write(json.dumps(frame, default=str, ensure_ascii=False))
        self.out.flush()

    event = run = delta = output = _write


SPINNER = "|/-\\"
PROGRESS_EVERY = 2.0  # seconds between a phase's progress lines off a terminal
CHARS_PER_TOKEN = 4  # for "tokens so far" while streaming; the event has the real count
DIM, BOLD, RED, GREEN, YELLOW, CYAN, RESET = (
    "\x1b[2m", "\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m", "\x1b[0m",
)  # fmt: skip


class HumanPrinter(Printer):
    """Lines for people: streamed text on a terminal (`tty`), progress lines elsewhere;
    ANSI colours only with `colour` (a terminal, without --no-color or NO_COLOR)."""

    def __init__(
        self, out: OutputWrapper, err: OutputWrapper, *, tty: bool, colour: bool = False
    ) -> None:
        self.out, self.err, self.tty, self.colour = out, err, tty, colour and tty
        self.stream_key: tuple | None = None
        self.stream_chars = 0
        self.stream_started = 0.0
        self.last_progress = 0.0
        self.spin = 0
        self.mid_line = False

    # - text helpers -

    def _paint(self, text: str, *colours: str) -> str:
        return f"{''.join(colours)}{text}{RESET}" if self.colour and colours else text

    def line(self, text: str, *colours: str) -> None:
        if self.mid_line:
            self.out.write("")  # ends the streamed text's line
            self.mid_line = False
        self.out.write(self._paint(text, *colours))
        self.out.flush()

    # - frames -

    def event(self, frame: dict) -> None:
        described = describe_event(frame)
        if described is not None:
            text, tone = described
            self.line(text, *TONES[tone])
        if frame["type"] in (EventType.PHASE_COMPLETED, EventType.CHECK_STARTED):
            self.stream_key = None  # what streams next is a new section

    def run(self, frame: dict) -> None:
        described = describe_run(frame["run"])
        if described is not None:
            text, tone = described
            self.line(text, *TONES[tone])

    def delta(self, frame: dict) -> None:
        key = (frame["run_id"], frame["phase"], frame.get("attempt", 1))
        if key != self.stream_key:
            self._section(frame, key)
        self.stream_chars += len(frame["delta"])
        if self.tty:
            self.out.write(self._paint(frame["delta"], DIM), ending="")
            self.out.flush()
            self.mid_line = not frame["delta"].endswith("\n")
        else:
            self._progress(frame["phase"])

    def output(self, frame: dict) -> None:
        key = ("check", frame["check_id"])
        if key != self.stream_key:  # the check.started line was its header
            self.stream_key, self.stream_chars = key, 0
            self.stream_started = self.last_progress = time.monotonic()
        self.stream_chars += len(frame["lines"])
        if self.tty:
            for text in frame["lines"]:
                self.line(f"    {text}", DIM)
        else:
            lines = f"{self.stream_chars} line{'s' if self.stream_chars != 1 else ''}"
            self._progress(f"{frame['kind']} run", f"{lines} of output so far")

    def summary(self, text: str, *, error: str = "") -> None:
        self.line(text, BOLD)
        if error:
            self.err.write(f"error: {error}")

    # - sections and progress -

    def _section(self, frame: dict, key: tuple) -> None:
        self.stream_key, self.stream_chars = key, 0
        self.stream_started = self.last_progress = time.monotonic()
        attempt = f" · attempt {key[2]}" if key[2] > 1 else ""
        self.line(f"▸ {frame['phase']} · {label(frame['role'])} is writing{attempt}", BOLD, CYAN)

    def _progress(self, what: str, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_EVERY:
            return
        self.last_progress = now
        self.spin = (self.spin + 1) % len(SPINNER)
        detail = detail or f"~{self.stream_chars // CHARS_PER_TOKEN} tokens so far"
        self.line(f"  {SPINNER[self.spin]} {what} · {now - self.stream_started:.0f} s · {detail}")


WORK_ITEM_EVENTS = (
    EventType.WORK_ITEM_STARTED,
    EventType.WORK_ITEM_FINISHED,
    EventType.WORK_ITEM_FAILED,
)

TONES = {
    "good": (GREEN,),
    "bad": (BOLD, RED),
    "warn": (YELLOW,),
    "info": (),
    "gate": (BOLD, YELLOW),
}


def label(value: str | None) -> str:
    return value.replace("_", " ").title() if value else "—"


def describe_event(frame: dict) -> tuple[str, str] | None:
    """A persisted event as one line and its tone; None for events not worth a line."""
    data, kind = frame.get("data") or {}, frame["type"]
    seq = f"#{frame['seq']:<3}"
    if kind == EventType.WORKFLOW_CREATED:
        return f"{seq} opened in {data.get('state')} · model {data.get('model')}", "info"
    if kind == EventType.PHASE_COMPLETED:
        usage = data.get("usage") or {}
        tokens = f"{usage.get('input_tokens', 0)}+{usage.get('output_tokens', 0)} tokens"
        held = " (awaits approval)" if data.get("status") == "pending_approval" else ""
        return (
            f"{seq} ✓ {data.get('phase')} evidence {data.get('status')}{held} · "
            f"{label(data.get('role'))} · attempt {data.get('attempt')} · {tokens} · "
            f"${usage.get('cost_usd', '0')}",
            "good",
        )
    if kind == EventType.APPROVAL_REQUESTED:
        return f"{seq} ⏸ gate: {data.get('phase')} waits for a project owner's approval", "gate"
    if kind == EventType.TRANSITIONED:
        return _describe_transition(seq, data)
    if kind == EventType.CHECK_STARTED:
        return f"{seq} ⚙ {data.get('kind', 'test')} run started ({data.get('backend')})", "info"
    if kind == EventType.CHECK_FINISHED:
        return _describe_check(seq, data)
    if kind == EventType.RELEASE_FAILED:
        return f"{seq} ✗ release failed: {data.get('error')}", "bad"
    if kind in WORK_ITEM_EVENTS:
        return _describe_work_item(seq, kind, data)
    return None


def _describe_work_item(seq: str, kind: str, data: dict) -> tuple[str, str]:
    key, title = data.get("key"), data.get("title") or ""
    if kind == EventType.WORK_ITEM_STARTED:
        return f"{seq} ▸ IMPLEMENTATION · work item {key} {title}".rstrip(), "info"
    if kind == EventType.WORK_ITEM_FINISHED:
        return f"{seq} ✓ work item {key} done · {', '.join(data.get('files') or [])}", "good"
    return f"{seq} ✗ work item {key} failed: {data.get('error') or data.get('reason')}", "bad"


def _describe_transition(seq: str, data: dict) -> tuple[str, str]:
    source, target, kind = data.get("from_state"), data.get("to_state"), data.get("kind")
    reason = f": {data['reason']}" if data.get("reason") else ""
    if kind == HandoffKind.FORWARD:
        roles = f"{label(data.get('from_role'))} → {label(data.get('to_role'))}"
        return f"{seq} → handoff {source} → {target} · {roles}", "good"
    if kind == HandoffKind.REGRESSION:
        count = data.get("regression_count")
        return f"{seq} ↩ regression {source} → {target} (regression {count}){reason}", "warn"
    if kind == HandoffKind.APPROVAL:
        return f"{seq} ✓ approved {source} → {target}", "good"
    if kind == HandoffKind.REJECTION:
        return f"{seq} ↩ rejected {source}: {data.get('feedback', '')}", "warn"
    if kind == HandoffKind.CANCEL:
        return f"{seq} ■ cancelled in {source}{reason}", "warn"
    return f"{seq} ✗ failed in {source}{reason}", "bad"


def _describe_check(seq: str, data: dict) -> tuple[str, str]:
    what = f"{data.get('kind', 'test')} run {data.get('status')}"
    if data.get("tests_run") is not None:
        figures = (
            f"{data['tests_run']} run, {data.get('tests_failed')} failed, "
            f"{data.get('tests_errors')} errors, {data.get('tests_skipped')} skipped"
        )
    else:
        figures = data.get("reason") or ""
    took = f" ({data['duration_ms']} ms)" if data.get("duration_ms") is not None else ""
    tone = "good" if data.get("status") == "passed" else "bad"
    return f"{seq} ⚙ {what}: {figures}{took}", tone


def describe_run(run: dict) -> tuple[str, str] | None:
    """An autopilot run's status as one line; None for statuses not worth a line."""
    status = run["status"]
    if status == AIRun.Status.FAILED:
        return f"✗ autopilot run failed: {run['error'] or run['stop_reason']}", "bad"
    if status == AIRun.Status.CANCELLED:
        return f"■ autopilot run cancelled: {run['stop_reason']}", "warn"
    if status == AIRun.Status.STOPPED:
        return f"■ autopilot run stopped: {run['stop_reason']}", "warn"
    if status == AIRun.Status.WAITING:
        return f"⏸ autopilot run {run['stop_reason'] or 'waits at a gate'}", "gate"
    if status == AIRun.Status.COMPLETED:
        return f"✓ autopilot run completed ({run['phases_completed']} phases)", "good"
    return None
