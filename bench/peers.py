"""Peers: one workflow step of TopDog beside LangGraph and django-fsm-2 + django-fsm-log.

Import only after django.setup() with BENCH_PEERS=1 (bench/run.py does both). All three
run in this process on the same PostgreSQL, one step at a time, interleaved: each round
opens one workflow of each (untimed), then for each of the six phases times one step of
each peer, in an order that rotates every phase, so machine noise hits all three alike.

- TopDog: `workflows.services.workflow_phase_complete` with the phase's valid evidence
  (`EVIDENCE_EXAMPLES`; IMPLEMENTATION's change set goes through the static checks; the
  sandbox is off, so nothing is run or fetched), fully audited, broadcasting through the
  channel layer on Redis after the commit, as in production. The broadcast runs on this
  process's sender thread after the call has returned; the bench waits for it after each
  TopDog step (`settle`, timed apart and printed) so that its sends are not run, and
  charged, inside the next peer's timed step: they were, and made LangGraph's step
  about 0.9 ms (a third) slower than it is.
- LangGraph: a `StateGraph` of six nodes DISCOVERY -> ... -> DEPLOYMENT, each returning
  a small state update, compiled with `PostgresSaver` (langgraph-checkpoint-postgres,
  psycopg 3, its own database on the same server), `interrupt_before` the first node and
  `interrupt_after` every node, `durability="sync"`. A step is `graph.invoke(None,
  thread)`: load the thread's latest checkpoint, run one node, write its writes and the
  next checkpoint before returning.
- django-fsm: `bench.peer_app.PeerWorkflow`, an FSMField with one `@transition` under
  django-fsm-log's `fsm_log_by`. A step is one transaction: `select_for_update`,
  `complete(by=user)`, `save()`, and django-fsm-log's StateLog row.

What each step writes is measured once per run (statements and rows), not assumed.
"""

import gc
import itertools
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from bench.client import Stats

PHASES = ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION", "DEPLOYMENT")
TOPDOG, LANGGRAPH, FSM = "topdog", "langgraph", "django-fsm-log"
PEERS = (TOPDOG, LANGGRAPH, FSM)
LANGGRAPH_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


@dataclass(frozen=True)
class PeersConfig:
    workflows: int  # timed workflows per peer, six steps each
    warmup: int  # untimed workflows per peer first
    limit_p50_ratio: float = 1.5  # TopDog's step p50 within this of LangGraph's

    @classmethod
    def full(cls) -> "PeersConfig":
        return cls(workflows=100, warmup=5)

    @classmethod
    def quick(cls) -> "PeersConfig":
        return cls(workflows=20, warmup=3)


# --- LangGraph ---------------------------------------------------------------------------


class PeerState(TypedDict):
    phase: str
    evidence: dict
    steps: int


def _node(phase: str) -> Callable[[PeerState], dict]:
    def node(state: PeerState) -> dict:
        return {
            "phase": phase,
            "evidence": {"phase": phase, "summary": f"{phase} done.", "ok": True},
            "steps": state["steps"] + 1,
        }

    node.__name__ = phase.lower()
    return node


class LangGraphPeer:
    """The compiled graph on its PostgresSaver; one thread per workflow."""

    def __init__(self, database_url: str) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.graph import END, START, StateGraph
        from psycopg import Connection
        from psycopg.rows import dict_row

        # As PostgresSaver.from_conn_string opens it.
        self.connection = Connection.connect(
            database_url, autocommit=True, prepare_threshold=0, row_factory=dict_row
        )
        self.saver = PostgresSaver(self.connection)
        self.saver.setup()
        builder = StateGraph(PeerState)
        for phase in PHASES:
            builder.add_node(phase, _node(phase))
        builder.add_edge(START, PHASES[0])
        for a, b in itertools.pairwise(PHASES):
            builder.add_edge(a, b)
        builder.add_edge(PHASES[-1], END)
        self.graph = builder.compile(
            checkpointer=self.saver,
            interrupt_before=[PHASES[0]],
            interrupt_after=list(PHASES),
        )

    def open(self) -> dict:
        """A new thread, stopped before DISCOVERY (its input checkpoint written, untimed)."""
        config = {"configurable": {"thread_id": str(uuid.uuid4())}}
        self.graph.invoke({"phase": "START", "evidence": {}, "steps": 0}, config, durability="sync")
        return config

    def step(self, config: dict, phase: str) -> None:
        self.graph.invoke(None, config, durability="sync")

    def settle(self) -> None:
        """Nothing runs on after a step."""

    def check(self, config: dict) -> None:
        state = self.graph.get_state(config)
        if state.values["steps"] != len(PHASES) or state.values["phase"] != PHASES[-1]:
            raise RuntimeError(f"langgraph: the thread ended at {state.values}")

    def rows(self) -> dict[str, int]:
        with self.connection.cursor() as cursor:
            return {
                table: cursor.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]
                for table in LANGGRAPH_TABLES
            }

    def statements(self, config: dict) -> int:
        """SQL statements one step sends, counted on the connection's cursors."""
        from psycopg import Cursor

        count = 0
        execute, executemany = Cursor.execute, Cursor.executemany

        def counted_execute(cursor, query, params=None, **kwargs):
            nonlocal count
            count += 1
            return execute(cursor, query, params, **kwargs)

        def counted_executemany(cursor, query, params_seq, **kwargs):
            nonlocal count
            params_seq = list(params_seq)
            count += len(params_seq)
            return executemany(cursor, query, params_seq, **kwargs)

        Cursor.execute, Cursor.executemany = counted_execute, counted_executemany
        try:
            self.step(config, "")
        finally:
            Cursor.execute, Cursor.executemany = execute, executemany
        return count

    def close(self) -> None:
        self.connection.close()


# --- django-fsm-2 + django-fsm-log -------------------------------------------------------


class FsmPeer:
    def __init__(self, user: Any) -> None:
        from bench.peer_app.models import PeerWorkflow

        self.model = PeerWorkflow
        self.user = user

    def open(self) -> int:
        return self.model.objects.create().pk

    def step(self, pk: int, phase: str) -> None:
        from django.db import transaction

        with transaction.atomic():
            workflow = self.model.objects.select_for_update().get(pk=pk)
            workflow.complete(by=self.user)
            workflow.save()

    def settle(self) -> None:
        """Nothing runs on after a step."""

    def check(self, pk: int) -> None:
        from django_fsm_log.models import StateLog

        state = self.model.objects.values_list("state", flat=True).get(pk=pk)
        logs = StateLog.objects.for_(self.model.objects.get(pk=pk)).count()
        if state != "COMPLETE" or logs != len(PHASES):
            raise RuntimeError(f"django-fsm: ended in {state} with {logs} StateLog rows")


# --- TopDog ----------------------------------------------------------------------------


class TopDogPeer:
    def __init__(self, user: Any, project: Any) -> None:
        from workflows.evidence import EVIDENCE_EXAMPLES
        from workflows.services import Actor

        self.actor = Actor.of(user)
        self.project = project
        self.evidence = EVIDENCE_EXAMPLES

    def open(self) -> Any:
        from workflows.services import workflow_initialize

        workflow = workflow_initialize(
            project=self.project,
            requirements={
                "description": "Peers bench: add dark mode to the settings page",
                "acceptance": ["toggle persists per user", "respects the OS preference"],
            },
            actor=self.actor,
        )
        return workflow.id

    def step(self, workflow_id: Any, phase: str) -> None:
        from workflows.services import workflow_phase_complete

        outcome = workflow_phase_complete(
            workflow_id=workflow_id,
            ai_response=f"{phase} done.",
            result=self.evidence[phase],
            actor=self.actor,
            expected_state=phase,
        )
        following = PHASES[PHASES.index(phase) + 1] if phase != PHASES[-1] else "COMPLETE"
        if outcome.workflow.state != following:
            raise RuntimeError(f"topdog: {phase} moved to {outcome.workflow.state}")

    def settle(self) -> None:
        """Wait until the step's after-commit broadcast has gone (timed apart), so that its
        sends, on this process's sender thread, do not run during the next peer's step."""
        from workflows.broadcast import broadcast_flush

        broadcast_flush()

    def check(self, workflow_id: Any) -> None:
        from workflows.models import Workflow

        state = Workflow.objects.values_list("state", flat=True).get(pk=workflow_id)
        if state != "COMPLETE":
            raise RuntimeError(f"topdog: the workflow ended in {state}")


# --- the run ---------------------------------------------------------------------------


def run(*, config: PeersConfig, base: Any, langgraph_url: str) -> dict:
    """Set the three up, measure what a step writes, then time them interleaved."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from workflows.models import Project

    user = get_user_model().objects.get(pk=base.user_id)
    project = Project.objects.get(pk=base.project_ids[0])
    if project.approval_gates:
        raise RuntimeError("the peers bench needs a project without approval gates")
    langgraph = LangGraphPeer(langgraph_url)
    peers = {TOPDOG: TopDogPeer(user, project), LANGGRAPH: langgraph, FSM: FsmPeer(user)}
    try:
        writes = _writes(peers)
        samples: dict[str, list[int]] = {name: [] for name in PEERS}
        settled: dict[str, list[int]] = {name: [] for name in PEERS}  # after the step
        by_phase: dict[str, dict[str, list[int]]] = {n: {p: [] for p in PHASES} for n in PEERS}
        gc.collect()
        gc.freeze()  # the setup's objects stay out of the collector's way, for all three
        try:
            for round_ in range(config.warmup + config.workflows):
                handles = {name: peer.open() for name, peer in peers.items()}
                for i, phase in enumerate(PHASES):
                    shift = (round_ + i) % len(PEERS)
                    for name in PEERS[shift:] + PEERS[:shift]:
                        started = time.perf_counter_ns()
                        peers[name].step(handles[name], phase)
                        stepped = time.perf_counter_ns()
                        peers[name].settle()
                        if round_ >= config.warmup:
                            samples[name].append(stepped - started)
                            by_phase[name][phase].append(stepped - started)
                            settled[name].append(time.perf_counter_ns() - stepped)
                for name, peer in peers.items():
                    peer.check(handles[name])
        finally:
            gc.unfreeze()
    finally:
        langgraph.close()

    stats = {name: Stats.of(samples[name]) for name in PEERS}
    series = {
        name: {
            **asdict(stats[name]),
            "p50_ms_by_phase": {
                phase: round(statistics.median(values) / 1e6, 3)
                for phase, values in by_phase[name].items()
            },
            "writes": writes[name],
            "after_step_p50_ms": round(statistics.median(settled[name]) / 1e6, 3),
        }
        for name in PEERS
    }
    ratio = stats[TOPDOG].p50_ms / stats[LANGGRAPH].p50_ms
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
    return {
        "config": asdict(config),
        "series": series,
        "channel_layer": layer,
        "fsm_ratio_p50": round(stats[TOPDOG].p50_ms / stats[FSM].p50_ms, 3),
        "targets": [
            {
                "ratio": "topdog_step_vs_langgraph",
                "measured": TOPDOG,
                "baseline": LANGGRAPH,
                "limit_p50_ratio": config.limit_p50_ratio,
                "p50_ratio": round(ratio, 3),
                "p99_ratio": round(stats[TOPDOG].p99_ms / stats[LANGGRAPH].p99_ms, 3),
                "passed": ratio <= config.limit_p50_ratio,
            }
        ],
    }


def _writes(peers: dict) -> dict[str, dict]:
    """One walk of each peer, untimed: what one step sends and writes, on average."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    found = {}
    for name in (TOPDOG, FSM):
        peer = peers[name]
        handle = peer.open()
        statements: Counter = Counter()
        per_step = []
        for phase in PHASES:
            with CaptureQueriesContext(connection) as captured:
                peer.step(handle, phase)
            sql = [q["sql"] for q in captured.captured_queries]
            per_step.append(len(sql))
            statements.update(_statement_kind(s) for s in sql)
        peer.check(handle)
        found[name] = {
            "statements_per_step": per_step,
            "writes_per_step": {
                kind: round(n / len(PHASES), 2)
                for kind, n in sorted(statements.items())
                if kind.split()[0] in ("INSERT", "UPDATE", "DELETE")
            },
        }
    peer = peers[LANGGRAPH]
    handle = peer.open()
    before = peer.rows()
    per_step = [peer.statements(handle) for _ in PHASES]
    after = peer.rows()
    peer.check(handle)
    found[LANGGRAPH] = {
        "statements_per_step": per_step,
        "writes_per_step": {
            f"rows {table}": round((after[table] - before[table]) / len(PHASES), 2)
            for table in LANGGRAPH_TABLES
        },
    }
    return found


def _statement_kind(sql: str) -> str:
    """'INSERT workflows_message', 'UPDATE workflows_workflow', 'SELECT', 'SAVEPOINT'..."""
    words = sql.replace('"', " ").split()
    verb = words[0].upper() if words else "?"
    upper = [w.upper() for w in words]
    table = None
    if verb == "INSERT" and "INTO" in upper:
        table = words[upper.index("INTO") + 1]
    elif verb == "UPDATE":
        table = words[1]
    elif verb == "DELETE" and "FROM" in upper:
        table = words[upper.index("FROM") + 1]
    return f"{verb} {table}" if table else verb


def writes_summary(name: str, writes: dict) -> str:
    """'11 statements/step; writes: 1 INSERT workflows_message, ...' for the table."""
    counts = writes["statements_per_step"]
    low, high = min(counts), max(counts)
    span = f"{low}" if low == high else f"{low}-{high}"
    parts = [
        f"{n:g} {kind.lower() if kind.startswith('rows') else kind}"
        for kind, n in writes["writes_per_step"].items()
    ]
    return f"{name}: {span} SQL statements a step; writes per step: {', '.join(parts)}"
