"""One command: TopDog's latency benchmarks, each beside a floor measured in the same run.

    python bench/run.py [--only api,ws,prompt,peers,sandbox,graph] [--quick] [--redis [URL]]
                        [--ws-in-memory] [--keep-db] [--strict]

Creates a fresh database on the local PostgreSQL, migrates it and seeds the bench user
(with an API token) and its projects through the real services, then runs the parts
asked for (all six by default), in this order:

api: the IDE endpoints beside bare-view floors (`bench/floors.py`).
  1. Seeds PLANNING workflows to read and more to complete, then copies up to 1,000
     workflows; copies that database (1,000 workflows) for the scale stage and starts
     daphne with `bench.settings` on each copy.
  2. Main stage, on the first server: status, get-ai-prompt, complete-phase and the two
     floors, interleaved in rounds, one request at a time over one keep-alive connection.
  3. Scale stage: grows the first database to 100,000 workflows (VACUUM ANALYZE), then
     times status on both servers interleaved: 1,000 against 100,000 workflows.
ws: transition commit to websocket receipt at 1, 50 and 500 clients on one daphne
  (`bench.asgi`, channel layer on Redis unless --ws-in-memory), beside a bare consumer
  receiving group_sends of the same shape (`bench/ws.py`, `bench/ws_floor.py`); a
  driver process (`bench/ws_driver.py`) commits and sends, interleaved in rounds.
prompt: `prompt_request_build` with 10, 1,000 and 10,000 messages of history, for the
  default model's window and GPT4's, in this process (`bench/prompt.py`).
peers: one workflow step of TopDog (`workflow_phase_complete`, channel layer on Redis)
  beside LangGraph with PostgresSaver and django-fsm-2 + django-fsm-log, in this process,
  interleaved step by step (`bench/peers.py`; needs requirements-bench.txt).
sandbox: bubblewrap against a direct pytest run, the static checks of a 20-file change
  set, and a project's second sandboxed test run (warm mirror, cached /deps) against its
  first, through `check_run_execute` (`bench/sandbox.py`, `bench/static_checks.py`).
graph: IMPLEMENTATION as work items on real db_worker processes, offline provider with
  500 ms per call: eight independent items at concurrency 4 against 1, and the time from
  a dependency finishing to its dependent starting with two workers (`bench/graph.py`).

Prints one table per part, then one `RATIO <name> <value> target <op> <limit> PASS|MISS`
line per target, writes bench/results/latest.json, stops daphne, drops the databases.
Every number comes from the run; nothing is fixed in advance. The bench process runs with
TOPDOG_SANDBOX=off (unless set), so walking workflows never fetches a repository; the
sandbox part switches to bubblewrap for itself.
"""

import argparse
import gc
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.seed import Base

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

PARTS = ("api", "ws", "prompt", "peers", "sandbox", "graph")

FLOOR_SELECT = "floor: select"
FLOOR_WRITE = "floor: lock+update+insert"
FLOOR_WRITE_2 = "floor: lock+update+2 inserts"


@dataclass(frozen=True)
class Config:
    reads: int  # requests per read endpoint and per floor in the main stage
    completes: int  # complete-phase requests, one fresh PLANNING workflow each
    warmup_reads: int
    warmup_completes: int
    batches: int  # interleaving rounds
    readers: int  # PLANNING workflows that status and get-ai-prompt cycle over
    scale_reads: int  # status (and floor) requests at each table size
    scale_sample: int  # visible workflows sampled at each table size
    small_rows: int = 1_000
    large_rows: int = 100_000
    projects: int = 20  # workflows spread over all of them
    member_of: int = 4  # the bench user sees the workflows of this many

    @classmethod
    def full(cls) -> "Config":
        return cls(
            reads=2000,
            completes=300,
            warmup_reads=200,
            warmup_completes=30,
            batches=20,
            readers=100,
            scale_reads=1000,
            scale_sample=1000,
        )

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            reads=300,
            completes=60,
            warmup_reads=50,
            warmup_completes=10,
            batches=10,
            readers=30,
            scale_reads=300,
            scale_sample=300,
        )


@dataclass(frozen=True)
class Databases:
    admin_url: str
    main: str
    small: str  # the copy made at `small_rows` workflows

    @property
    def langgraph(self) -> str:  # the peers part's LangGraph checkpoints
        return f"{self.main}_langgraph"

    def url(self, name: str) -> str:
        from bench.server import database_url

        return database_url(self.admin_url, name)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, first
        sys.path.insert(0, str(REPO))
    from bench import report, server

    main_db = args.db_name or f"topdog_bench_{os.getpid()}"
    dbs = Databases(admin_url=args.admin_url, main=main_db, small=f"{main_db}_1k")
    peers = "peers" in args.only
    if peers:
        _peers_check()
    env = {
        "DJANGO_SETTINGS_MODULE": args.settings,
        "DATABASE_URL": dbs.url(dbs.main),
        # The peers part runs TopDog in this process with the channel layer on Redis, as
        # in production; the api part's servers keep --redis's choice (server_env below).
        "REDIS_URL": args.redis or (DEFAULT_REDIS_URL if peers else ""),
        "BENCH_PEERS": "1" if peers else "0",
        "TOPDOG_SANDBOX": os.environ.get("TOPDOG_SANDBOX", "off"),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill, too

    began = time.monotonic()
    results: dict = {"parts": list(args.only), "quick": args.quick}
    with ExitStack() as cleanup:  # last in, first out: connections, databases
        if args.keep_db:
            cleanup.callback(_log, f"kept {dbs.url(dbs.main)} and {dbs.url(dbs.small)}")
        else:
            cleanup.callback(_log, f"dropped databases {dbs.main}, {dbs.small}, {dbs.langgraph}")
            cleanup.callback(server.database_drop, dbs.admin_url, dbs.langgraph)
            cleanup.callback(server.database_drop, dbs.admin_url, dbs.small)
            cleanup.callback(server.database_drop, dbs.admin_url, dbs.main)
        cleanup.callback(_django_disconnect)
        _log(f"creating database {dbs.main}")
        server.database_create(dbs.admin_url, dbs.main)
        base = _setup()
        # The servers: no peer apps, and Redis only with --redis, as before.
        server_env = {**os.environ, **env, "REDIS_URL": args.redis or "", "BENCH_PEERS": "0"}
        for part in args.only:
            started = time.monotonic()
            try:
                found = _bench_part(part, args, dbs, base, server_env)
            except Exception as exc:  # one broken part must not lose the others' figures
                _log(f"{part}: FAILED: {type(exc).__name__}: {exc}")
                found = {"error": f"{type(exc).__name__}: {exc}", "targets": []}
            found["duration_s"] = round(time.monotonic() - started, 1)
            _log(f"{part}: done in {found['duration_s']} s")
            results[part] = found
        results["environment"] = report.environment(
            database_url=dbs.url(dbs.main), redis_url=args.redis or ""
        )
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["targets"] = [
        {"part": part, **target} for part in args.only for target in results[part]["targets"]
    ]
    results["duration_s"] = round(time.monotonic() - began, 1)

    print(report.tables(results), flush=True)
    print(report.ratio_lines(results), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {out.relative_to(REPO)}")
    missed = [t["measured"] for t in results["targets"] if not t["passed"]]
    failed = [part for part in args.only if "error" in results[part]]
    return 1 if args.strict and (missed or failed) else 0


def _bench_part(
    part: str, args: argparse.Namespace, dbs: Databases, base: "Base", server_env: dict
) -> dict:
    """Run one part; its servers stop before the next part starts."""
    with ExitStack() as part_cleanup:
        if part == "api":
            config = Config.quick() if args.quick else Config.full()
            return _bench(config, dbs, base, server_env, args.app, part_cleanup)
        if part == "ws":
            return _bench_ws(args, dbs, base, server_env, part_cleanup)
        if part == "prompt":
            return _bench_prompt(args, base)
        if part == "peers":
            return _bench_peers(args, dbs, base)
        if part == "graph":
            return _bench_graph(args, base)
        return _bench_sandbox(args, base)


def _setup() -> "Base":
    """Django on the fresh bench database: migrated, with the bench user and its projects."""
    import django
    from django.core.management import call_command

    django.setup()
    _log("migrating")
    call_command("migrate", verbosity=0, interactive=False)
    from bench import seed

    return seed.base_seed(projects=Config.full().projects, member_of=Config.full().member_of)


def _bench(
    config: Config,
    dbs: Databases,
    base: "Base",
    server_env: dict,
    app: str,
    cleanup: ExitStack,
) -> dict:
    """The api part: the IDE endpoints and their floors, then status at two table sizes."""
    from bench import report, seed
    from bench.client import Client, Endpoint, Stats, expect_json, interleaved
    from bench.floors import COUNTER_ROWS
    from bench.server import Server, database_create
    from workflows.evidence import EVIDENCE_EXAMPLES
    from workflows.states import State

    # --- seed ---------------------------------------------------------------------------
    to_complete = config.warmup_completes + config.completes + 1  # +1: counting its SQL
    _log(f"seeding: {config.readers} workflows to read, {to_complete} to complete")
    readers = seed.workflows_in_planning(base=base, count=config.readers, label="Reader")
    completers = seed.workflows_in_planning(base=base, count=to_complete, label="Completer")
    complete_body = {
        "ai_response": "Plan ready.",
        "phase_result": EVIDENCE_EXAMPLES[State.PLANNING],
        "phase": State.PLANNING,
    }
    sql = _sql_per_request(
        base.token,
        {
            "status": ("get", f"/api/ai-workflows/status/{readers[0]}", None),
            "get-ai-prompt": ("post", f"/api/ai-workflows/get-ai-prompt/{readers[0]}", None),
            "complete-phase": (
                "post",
                "/api/ai-workflows/complete-phase",
                {"workflow_id": completers.pop(), **complete_body},
            ),
            FLOOR_SELECT: ("get", f"/bench/floor/select/{readers[0]}", None),
            FLOOR_WRITE: ("post", "/bench/floor/write", {"counter_id": 1}),
            FLOOR_WRITE_2: ("post", "/bench/floor/write2", {"counter_id": 1}),
        },
    )
    seed.workflows_top_up(base=base, total=config.small_rows, template_id=readers[0])
    seed.vacuum_analyze()
    small_label = _workflows(seed.workflow_count())

    # A database is copied whole by PostgreSQL, but only while nobody is connected to it.
    _django_disconnect()
    _log(f"copying {dbs.main} ({small_label}) to {dbs.small}")
    database_create(dbs.admin_url, dbs.small, template=dbs.main)

    # --- servers ------------------------------------------------------------------------
    servers = {}
    for name in (dbs.main, dbs.small):
        env = {**server_env, "DATABASE_URL": dbs.url(name)}
        log = RESULTS / f"daphne-{'1k' if name == dbs.small else 'main'}.log"
        servers[name] = cleanup.enter_context(Server(env=env, cwd=REPO, log_path=log, app=app))
    for name, server in servers.items():
        _log(f"daphne on 127.0.0.1:{server.port} serving {name}")
        server.wait_ready(f"/bench/floor/select/{readers[0]}")
    client = Client(servers[dbs.main].port, base.token)
    small_client = Client(servers[dbs.small].port, base.token)
    cleanup.callback(client.close)
    cleanup.callback(small_client.close)

    def body(data: dict) -> bytes:
        return json.dumps(data).encode()

    def reader(i: int) -> str:
        return readers[i % len(readers)]

    status = Endpoint(
        "status", client, lambda i: ("GET", f"/api/ai-workflows/status/{reader(i)}", None)
    )
    prompt = Endpoint(
        "get-ai-prompt",
        client,
        lambda i: ("POST", f"/api/ai-workflows/get-ai-prompt/{reader(i)}", None),
    )
    complete = Endpoint(
        "complete-phase",
        client,
        lambda i: (
            "POST",
            "/api/ai-workflows/complete-phase",
            body({"workflow_id": completers[i], **complete_body}),
        ),
        check=expect_json(previous_state=State.PLANNING, new_state=State.IMPLEMENTATION),
    )
    floor_select = Endpoint(
        FLOOR_SELECT, client, lambda i: ("GET", f"/bench/floor/select/{reader(i)}", None)
    )
    floor_write = Endpoint(
        FLOOR_WRITE,
        client,
        lambda i: ("POST", "/bench/floor/write", body({"counter_id": i % COUNTER_ROWS + 1})),
    )
    floor_write_2 = Endpoint(
        FLOOR_WRITE_2,
        client,
        lambda i: ("POST", "/bench/floor/write2", body({"counter_id": i % COUNTER_ROWS + 1})),
    )

    # --- main stage ---------------------------------------------------------------------
    _log("warming up")
    for endpoint in (floor_select, status, prompt, floor_write, floor_write_2):
        endpoint.run(config.warmup_reads, record=False)
    complete.run(config.warmup_completes, record=False)
    _log(
        f"main stage ({small_label}): {config.reads} x status, get-ai-prompt and each "
        f"floor, {config.completes} x complete-phase, in {config.batches} interleaved rounds"
    )
    with _quiet_gc():
        interleaved(
            [
                (floor_select, config.reads),
                (status, config.reads),
                (prompt, config.reads),
                (floor_write, config.reads),
                (floor_write_2, config.reads),
                (complete, config.completes),
            ],
            batches=config.batches,
        )

    # --- scale stage --------------------------------------------------------------------
    staged = time.monotonic()
    seed.workflows_top_up(base=base, total=config.large_rows, template_id=readers[0])
    seed.vacuum_analyze()
    large_label = _workflows(seed.workflow_count())
    _log(f"grew {dbs.main} to {large_label} in {time.monotonic() - staged:.1f} s")
    scale_endpoints = []
    for label, name, on in (
        (small_label, dbs.small, small_client),
        (large_label, dbs.main, client),
    ):
        sample = seed.visible_sample(
            database_url=dbs.url(name), user_id=base.user_id, count=config.scale_sample
        )

        def sampled(i: int, sample: list[str] = sample) -> str:
            return sample[i % len(sample)]

        scale_endpoints += [
            Endpoint(
                f"{FLOOR_SELECT} @ {label}",
                on,
                lambda i, s=sampled: ("GET", f"/bench/floor/select/{s(i)}", None),
            ),
            Endpoint(
                f"status @ {label}",
                on,
                lambda i, s=sampled: ("GET", f"/api/ai-workflows/status/{s(i)}", None),
            ),
        ]
    for endpoint in scale_endpoints:
        endpoint.run(config.warmup_reads, record=False)
    _log(
        f"scale stage: {config.scale_reads} x status and floor at {small_label} and at "
        f"{large_label}, interleaved"
    )
    with _quiet_gc():
        interleaved([(e, config.scale_reads) for e in scale_endpoints], batches=config.batches)

    # --- results ------------------------------------------------------------------------
    small_floor, small_status, large_floor, large_status = scale_endpoints
    baselines = {
        "status": FLOOR_SELECT,
        "get-ai-prompt": FLOOR_SELECT,
        "complete-phase": FLOOR_WRITE_2,
        small_status.name: small_floor.name,
        large_status.name: small_status.name,
    }
    # (ratio name, measured, limit of its p50 over its baseline's)
    targets = [
        ("complete_phase_vs_floor", "complete-phase", 2.0),
        ("status_vs_floor", "status", 1.3),
        ("status_100k_vs_1k", large_status.name, 1.2),
    ]
    endpoints = [status, prompt, complete, small_status, large_status]
    endpoints += [floor_select, floor_write, floor_write_2, small_floor, large_floor]
    stats = {e.name: Stats.of(e.samples_ns) for e in endpoints}
    series = {}
    for name, s in stats.items():
        kind = name.split(" @ ")[0]
        series[name] = {
            **asdict(s),
            "sql_statements": len(sql[kind]) if kind in sql else None,
            "baseline": baselines.get(name),
        }
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(config),
        "environment": {
            **report.environment(
                database_url=dbs.url(dbs.main), redis_url=server_env.get("REDIS_URL", "")
            ),
            "settings": server_env["DJANGO_SETTINGS_MODULE"],
            "app": app,
        },
        "client": {
            "kind": "http.client, one keep-alive connection per server, one request at a time",
            "connections_opened": client.connects + small_client.connects,
        },
        "complete_phase_move": "PLANNING -> IMPLEMENTATION, DISCOVERY completed at seeding",
        "scale_note": f"{small_label} from a copy of the database served by a second daphne, "
        "interleaved with the first",
        "series": series,
        "targets": [
            {"ratio": ratio, **_target(stats, name, baselines[name], limit)}
            for ratio, name, limit in targets
        ],
        # complete-phase over the one-insert floor it was held to before, for comparison
        "complete_phase_vs_floor_1insert": round(
            stats["complete-phase"].p50_ms / stats[FLOOR_WRITE].p50_ms, 3
        ),
        "sql": sql,
    }


def _bench_ws(
    args: argparse.Namespace, dbs: Databases, base: "Base", server_env: dict, cleanup: ExitStack
) -> dict:
    """The ws part: one daphne (TopDog plus the floor consumers), clients in this process."""
    from django.conf import settings

    from bench import ws
    from bench.server import Server
    from workflows.models import Workflow

    try:
        import websockets  # noqa: F401  the clients' library, not one of TopDog's requirements
    except ImportError as exc:
        raise SystemExit(
            "bench: the ws part needs the `websockets` package (pip install websockets); "
            "or run --only api,prompt"
        ) from exc
    config = ws.WsConfig.quick() if args.quick else ws.WsConfig.full()
    redis_url = "" if args.ws_in_memory else (args.redis or DEFAULT_REDIS_URL)
    if redis_url:
        _redis_check(redis_url)
    open_files = ws.fd_limit_raise(max(config.sizes))  # before daphne starts: it inherits it
    workflow_id = ws.workflow_seed(base=base)
    last_seq = Workflow.objects.values_list("last_event_seq", flat=True).get(pk=workflow_id)
    app = "bench.asgi:application"
    env = {**server_env, "REDIS_URL": redis_url}
    daphne = cleanup.enter_context(
        Server(env=env, cwd=REPO, log_path=RESULTS / "daphne-ws.log", app=app)
    )
    daphne.wait_ready(f"/bench/floor/select/{workflow_id}")
    layer = redis_url or "in-memory"
    plan = zip(config.sizes, config.transitions, strict=True)
    _log(
        f"ws: daphne on 127.0.0.1:{daphne.port} ({layer} channel layer); app, floor and "
        f"floor+hop interleaved, rounds at {', '.join(f'{n} x {size}' for size, n in plan)} "
        "clients"
    )
    # With Redis the driver commits and group_sends from its own process, as an API node
    # or worker would; the in-memory layer is reachable only through the server's views.
    via = ["--direct"] if redis_url else ["--via-port", str(daphne.port)]
    found = ws.run(
        config=config,
        port=daphne.port,
        token=base.token,
        user_id=base.user_id,
        workflow_id=workflow_id,
        last_seq=last_seq,
        driver_command=[sys.executable, "-m", "bench.ws_driver", *via],
        driver_env=env,
        driver_log=RESULTS / "ws-driver.log",
    )
    if redis_url:  # every client has gone, so every group should be empty
        found["stale_group_members"] = ws.groups_clear(
            redis_url=redis_url, prefix=settings.BENCH_REDIS_PREFIX, groups=found["groups"]
        )
    log = daphne.log_path.read_text(errors="replace")
    found["server_log"] = {
        "path": str(daphne.log_path.relative_to(REPO)),
        "exceptions": log.count("Exception inside application"),
        "killed": log.count("took too long to shut down"),
    }
    found["environment"] = {
        "channel_layer": layer,
        "app": app,
        "settings": server_env["DJANGO_SETTINGS_MODULE"],
        "open_files_limit": open_files,
        "server_heartbeat_s": settings.TOPDOG_WS_HEARTBEAT_SECONDS,
        "client": "websockets, one asyncio process, no client pings, no compression",
        "driver": "own process, service and group_send called directly"
        if redis_url
        else "own process, through the server's bench views (in-memory layer)",
    }
    return found


def _redis_check(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise SystemExit(
            f"bench: no Redis at {url} ({exc}); start it or use --ws-in-memory"
        ) from exc


def _bench_prompt(args: argparse.Namespace, base: "Base") -> dict:
    """The prompt part: prompt_request_build in this process, by length of history."""
    from bench import prompt

    config = prompt.PromptConfig.quick() if args.quick else prompt.PromptConfig.full()
    _log(f"prompt: seeding {len(prompt.MODELS)} x {prompt.HISTORIES} messages of history")
    workflow_ids = prompt.seed(base=base, config=config)
    _log(f"prompt: {config.rounds} interleaved rounds of {len(workflow_ids)} builds")
    return prompt.run(config=config, workflow_ids=workflow_ids)


def _peers_check() -> None:
    from importlib.util import find_spec

    missing = []
    for name in ("langgraph.graph", "langgraph.checkpoint.postgres", "django_fsm_log"):
        try:
            found = find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise SystemExit(
            f"bench: the peers part needs {', '.join(missing)}: pip install -r "
            "requirements-bench.txt (./dev bench does), or leave peers out of --only"
        )


def _bench_peers(args: argparse.Namespace, dbs: Databases, base: "Base") -> dict:
    """The peers part: TopDog, LangGraph and django-fsm-log steps, interleaved in process."""
    from django.conf import settings

    from bench import peers
    from bench.server import database_create

    redis_url = os.environ["REDIS_URL"]
    _redis_check(redis_url)
    if "Redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        raise SystemExit(f"bench: peers needs the channel layer on Redis ({redis_url})")
    database_create(dbs.admin_url, dbs.langgraph)
    config = peers.PeersConfig.quick() if args.quick else peers.PeersConfig.full()
    _log(
        f"peers: {config.warmup} + {config.workflows} workflows of six steps each for "
        f"TopDog, LangGraph (PostgresSaver on {dbs.langgraph}) and django-fsm-log, "
        "interleaved step by step"
    )
    found = peers.run(config=config, base=base, langgraph_url=dbs.url(dbs.langgraph))
    found["environment"] = {"redis": redis_url, "sandbox": settings.TOPDOG_SANDBOX}
    return found


def _bench_graph(args: argparse.Namespace, base: "Base") -> dict:
    """The graph part: work items on db_worker processes (`bench/graph.py`)."""
    from bench import graph

    config = graph.GraphConfig.quick() if args.quick else graph.GraphConfig.full()
    _log(
        f"graph: {config.rounds} rounds of 8 items at concurrency 1 and 4 (4 workers), then "
        f"{config.chains} plans of two 5-item chains on 2 workers; "
        f"{graph.CALL_DELAY_MS} ms per model call"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    return graph.run(config=config, user_id=base.user_id, logs=RESULTS)


def _bench_sandbox(args: argparse.Namespace, base: "Base") -> dict:
    """The sandbox part: bubblewrap's overhead, the static checks, the dependency cache."""
    from bench import sandbox, static_checks

    quick = args.quick
    runs = 5 if quick else 11
    _log(f"sandbox: {runs} alternating pytest runs, direct and in bubblewrap")
    overhead = sandbox.bench_sandbox_overhead(runs=runs)
    _log("sandbox: static checks of a 20-file change set")
    checks = static_checks.bench_static_checks(runs=21 if quick else 51)
    _log("sandbox: a project's first and second test run through check_run_execute")
    cache = sandbox.bench_sandbox_cache(base=base, pairs=1 if quick else 2)
    limits = sandbox.LIMITS
    overhead_ok = overhead["ratio"] <= limits["ratio"] or overhead["delta_ms"] <= limits["delta_ms"]
    targets = [
        {
            "ratio": "sandbox_vs_direct",
            "measured": "bubblewrap pytest",
            "baseline": "direct pytest",
            "value": overhead["ratio"],
            "op": "<=",
            "limit": limits["ratio"],
            "passed": overhead_ok,
            "note": f"delta {overhead['delta_ms']:+.0f} ms, target <= +{limits['delta_ms']:.0f} "
            "ms; PASS if either holds",
        },
        {
            "ratio": "static_checks_20_files_ms",
            "measured": "static checks, 20 files",
            "value": checks["p50_ms"],
            "op": "<",
            "limit": limits["static_ms"],
            "passed": checks["p50_ms"] < limits["static_ms"],
        },
        {
            "ratio": "sandbox_cache_speedup",
            "measured": "second test run",
            "baseline": "first test run",
            "value": cache["speedup"],
            "op": ">=",
            "limit": limits["cache_speedup"],
            "passed": cache["speedup"] >= limits["cache_speedup"],
        },
    ]
    return {"overhead": overhead, "static_checks": checks, "cache": cache, "targets": targets}


def _workflows(count: int) -> str:
    return f"{count:,} workflows"


def _target(stats: dict, measured: str, baseline: str, limit: float) -> dict:
    ratio = stats[measured].p50_ms / stats[baseline].p50_ms
    return {
        "measured": measured,
        "baseline": baseline,
        "limit_p50_ratio": limit,
        "p50_ratio": round(ratio, 3),
        "p99_ratio": round(stats[measured].p99_ms / stats[baseline].p99_ms, 3),
        "passed": ratio <= limit,
    }


def _sql_per_request(token: str, requests: dict[str, tuple]) -> dict[str, list[str]]:
    """The statements one request of each endpoint sends to PostgreSQL, BEGIN/COMMIT too.

    Counted in this process through Django's test client, on the same database.
    """
    from django.db import connection, reset_queries
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext

    client = DjangoClient(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Token {token}")
    client.get(requests["status"][1])  # the token's first use writes last_used_at
    found = {}
    for name, (method, path, data) in requests.items():
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            response = getattr(client, method)(path, data=data, content_type="application/json")
        if response.status_code != 200:
            raise RuntimeError(
                f"{name}: {path} answered {response.status_code}: {response.content}"
            )
        found[name] = [q["sql"] for q in captured.captured_queries]
    return found


@contextmanager
def _quiet_gc() -> Iterator[None]:
    """No collector pauses in the client while it times requests (the server keeps its own)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _django_disconnect() -> None:
    if "django.db" not in sys.modules:
        return
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
        if getattr(connection, "pool", None) is not None:
            connection.close_pool()


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="TopDog's latency benchmarks (IDE endpoints, websocket fan-out, prompt "
        "build), each beside a floor or baseline measured in the same run, on PostgreSQL.",
    )
    parser.add_argument(
        "--only",
        type=_parts,
        default=PARTS,
        metavar="PARTS",
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke run")
    parser.add_argument(
        "--redis",
        nargs="?",
        const=DEFAULT_REDIS_URL,
        default=None,
        metavar="URL",
        help="api part: serve with REDIS_URL set (throttle cache and channel layer on Redis, as "
        f"in production); URL defaults to {DEFAULT_REDIS_URL}. The ws part uses Redis "
        "always (this URL or the default) unless --ws-in-memory",
    )
    parser.add_argument(
        "--ws-in-memory",
        action="store_true",
        help="ws part: the in-memory channel layer instead of Redis",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL the bench creates and drops its databases through "
        f"(env BENCH_ADMIN_DATABASE_URL; default {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument("--db-name", help="bench database name (default topdog_bench_<pid>)")
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the bench databases to look into them"
    )
    parser.add_argument(
        "--settings",
        default="bench.settings",
        help="settings module of the servers, for experiments (default bench.settings)",
    )
    parser.add_argument(
        "--app",
        default="topdog.asgi:application",
        help="ASGI application the api part serves, for experiments (default "
        "topdog.asgi:application)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def _parts(value: str) -> tuple[str, ...]:
    asked = [p.strip() for p in value.split(",") if p.strip()]
    unknown = sorted(set(asked) - set(PARTS))
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}; got {value!r}")
    return tuple(p for p in PARTS if p in asked)  # always in the documented order


if __name__ == "__main__":
    sys.exit(main())
