"""Websocket fan-out: transition commit to receipt at N clients, beside a bare-consumer floor.

Import only after django.setup(). One daphne serves `bench.asgi:application` (TopDog plus
the floor consumers of `bench/ws_floor.py`) on the bench database, with the channel
layer on Redis (the production shape of a node) or in memory. The clients run in this
process (asyncio, the `websockets` library, no pings); a driver (`bench/ws_driver.py`)
runs in a process of its own.

At each client count N, three sets of N clients stay connected while they are measured
in interleaved rounds, one send at a time, each waiting until every client of its set
has every frame (or a timeout):

- app: N clients of one workflow (`/ws/workflows/<id>/?after=<last seq>`, token auth).
  The driver completes a phase of that workflow through the service (IMPLEMENTATION ->
  TESTING forward, then a failing test report back to IMPLEMENTATION, and again) and
  answers its commit's wall-clock time and what its broadcast sent to the workflow's
  group: how many messages, with frames of which sizes.
- floor: N clients of the bare consumer; the driver `group_send`s messages of that shape
  to their group and answers when it began.
- floor+hop: the same with channels' default dispatch (a thread hop per message).

Latency = `time.time()` when a client's `recv` returns a frame minus the commit (app) or
first send (floors): one machine, one clock. Every client must receive every seq of its
measured range exactly once and in order; anything else is counted.

After the last (largest) count's clients have closed, it prints, for the log and for
scripts:

    stale_group_members=<n>      memberships left in Redis once every client has gone
    max_connections_errors=<n>   redis-py MaxConnectionsError tracebacks in daphne's log
    RATIO ws_p99_<N> <p99 app / p99 floor> target <= 2.0 PASS|MISS   (PASS: none lost,
                                 duplicated or out of order, too)

Clients close `close_concurrency` at a time (25; BENCH_WS_CLOSE_CONCURRENCY=0 closes
each count's clients all at once: a disconnect storm).
"""

import asyncio
import contextlib
import gc
import itertools
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from bench.client import BenchError, Stats
from bench.ws_floor import floor_group
from workflows.broadcast import workflow_group

APP = "app"
FLOOR = "floor"
FLOOR_HOP = "floor+hop"
REGRESSION_LIMIT = 32_000  # PositiveSmallIntegerField; the cycle regresses once per two


@dataclass(frozen=True)
class WsConfig:
    sizes: tuple[int, ...]  # clients of each set, one count after the other
    transitions: tuple[int, ...]  # measured rounds (a transition, two floor sends) per count
    warmup: int  # unmeasured rounds at each count
    limit_p99_ratio: float = 2.0
    timeout_s: float = 15.0  # per transition, for every client to have every frame
    connect_concurrency: int = 25  # handshakes in flight; daphne's backlog is 50
    close_concurrency: int = 25  # closes in flight; 0: all of a count's clients at once
    settle_s: float = 2.0  # after closing a count's clients, before the next connect

    @classmethod
    def full(cls) -> "WsConfig":
        return cls(sizes=(1, 50, 500), transitions=(200, 200, 30), warmup=6, **_close_from_env())

    @classmethod
    def quick(cls) -> "WsConfig":
        return cls(sizes=(1, 50, 500), transitions=(20, 20, 6), warmup=2, **_close_from_env())


def _close_from_env() -> dict:
    value = os.environ.get("BENCH_WS_CLOSE_CONCURRENCY", "").strip()
    return {"close_concurrency": int(value)} if value else {}


@dataclass
class Listener:
    """One websocket client: every frame it got after `replay.done`, with its receipt time."""

    ws: object
    received: list[tuple[float, dict, int]] = field(default_factory=list)  # (t, frame, bytes)
    task: asyncio.Task | None = None


@dataclass
class Tracker:
    """How many clients have each seq; wakes the driver whenever that changes."""

    counts: Counter = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, seq: int) -> None:
        self.counts[seq] += 1
        self.changed.set()

    async def wait_all(self, seqs: list[int], clients: int, deadline: float) -> bool:
        while not all(self.counts[s] >= clients for s in seqs):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return False
        return True


def workflow_seed(*, base: object) -> str:
    """A workflow in IMPLEMENTATION of the bench user's first project, with room to regress."""
    from bench import seed
    from workflows.evidence import EVIDENCE_EXAMPLES
    from workflows.models import Workflow
    from workflows.services import Actor, workflow_phase_complete
    from workflows.states import State

    (workflow_id,) = seed.workflows_in_planning(base=base, count=1, label="Websocket")
    user = Workflow.objects.get(pk=workflow_id).project.memberships.get(user_id=base.user_id).user
    workflow_phase_complete(
        workflow_id=workflow_id,
        ai_response="Plan ready.",
        result=EVIDENCE_EXAMPLES[State.PLANNING],
        actor=Actor.of(user),
    )
    Workflow.objects.filter(pk=workflow_id).update(regression_limit=REGRESSION_LIMIT)
    return workflow_id


def fd_limit_raise(clients: int) -> int:
    """Raise this process's (and so daphne's) open-file limit for three sets of `clients`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * clients + 512
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise BenchError(
                f"{clients} websocket clients need {need} open files; hard limit {hard}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(
    *,
    config: WsConfig,
    port: int,
    token: str,
    user_id: int,
    workflow_id: str,
    last_seq: int,
    driver_command: list[str],
    driver_env: dict,
    driver_log: Path,
) -> dict:
    """Every client count in turn, app and floors interleaved; stats, verdicts, checks.

    Then the lines the module docstring names: memberships left and daphne's
    MaxConnectionsErrors (with Redis), and the ratio at the largest count.
    """
    found = asyncio.run(
        _run(
            config=config,
            port=port,
            token=token,
            workflow_id=workflow_id,
            driver=_Driver(
                command=driver_command,
                env=driver_env,
                log=driver_log,
                user_id=user_id,
                workflow_id=workflow_id,
                app_seq=last_seq,
            ),
        )
    )
    redis_url = driver_env.get("REDIS_URL")
    if redis_url:
        from django.conf import settings

        prefix = getattr(settings, "BENCH_REDIS_PREFIX", "asgi")
        left = group_members(redis_url=redis_url, prefix=prefix, groups=found["groups"])
        # daphne's log beside the driver's (bench/run.py writes both to bench/results/)
        server_log = driver_log.with_name("daphne-ws.log")
        text = server_log.read_text(errors="replace") if server_log.exists() else ""
        found["max_connections_errors"] = text.count(MAX_CONNECTIONS_ERROR)
        print(f"stale_group_members={sum(left.values())}", flush=True)
        print(f"max_connections_errors={found['max_connections_errors']}", flush=True)
    largest = max(config.sizes)
    target = next(t for t in found["targets"] if t["measured"] == f"{APP} @ {largest}")
    verdict = "PASS" if target["passed"] else "MISS"
    print(
        f"RATIO ws_p99_{largest} {target['p99_ratio']:.3f} target <= "
        f"{target['limit_p99_ratio']} {verdict}",
        flush=True,
    )
    return found


MAX_CONNECTIONS_ERROR = "redis.exceptions.MaxConnectionsError:"  # a traceback's last line


async def _run(
    *, config: WsConfig, port: int, token: str, workflow_id: str, driver: "_Driver"
) -> dict:
    series: dict[str, dict] = {}
    targets = []
    groups = [workflow_group(workflow_id)]
    await driver.start()
    try:
        for size, count in zip(config.sizes, config.transitions, strict=True):
            name = f"{workflow_id.replace('-', '')}-{size}"
            kinds = [
                _Kind(APP, f"/ws/workflows/{workflow_id}/?after={driver.app_seq}"),
                _Kind(FLOOR, f"/bench/ws/floor/{name}/", group=name),
                _Kind(FLOOR_HOP, f"/bench/ws/floor-hop/{name}-hop/", group=f"{name}-hop"),
            ]
            groups += [floor_group(kind.group) for kind in kinds if kind.group]
            found = await _size(
                kinds=kinds,
                driver=driver,
                port=port,
                token=token,
                size=size,
                count=count,
                config=config,
            )
            app, floor, hop = (f"{kind.name} @ {size}" for kind in kinds)
            series[app] = {**found[APP], "baseline": floor}
            series[floor] = {**found[FLOOR], "baseline": None}
            series[hop] = {**found[FLOOR_HOP], "baseline": floor}
            targets.append(_target(app, series[app], floor, series[floor], config))
    finally:
        await driver.stop()
    return {"series": series, "targets": targets, "config": asdict(config), "groups": groups}


@dataclass
class _Kind:
    """One of the interleaved series at a client count: its clients and what they got."""

    name: str
    path: str
    group: str | None = None  # the floors' group name
    tracker: Tracker = field(default_factory=Tracker)
    listeners: list[Listener] = field(default_factory=list)
    marks: dict[int, float] = field(default_factory=dict)  # seq -> commit or send time
    measured: list[list[int]] = field(default_factory=list)  # seqs of each measured send
    send_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    connect_s: float = 0.0


async def _size(
    *,
    kinds: list[_Kind],
    driver: "_Driver",
    port: int,
    token: str,
    size: int,
    count: int,
    config: WsConfig,
) -> dict[str, dict]:
    """Connect `size` clients of each kind, then run them in rounds, one send at a time.

    Each round sends once for every kind, rotating which goes first, so drift and the
    other programs on the machine land on all of them alike. The floors send messages
    shaped like the app's transition of the same round (its kind alternates).
    """
    driver.messages = []
    try:
        for kind in kinds:
            started = time.monotonic()
            kind.listeners = await _connect(
                f"ws://127.0.0.1:{port}{kind.path}",
                size,
                token,
                kind.tracker,
                config.connect_concurrency,
            )
            kind.connect_s = time.monotonic() - started
        with _quiet_gc():
            for round_ in range(config.warmup + count):
                # warmup rounds run the app first: the floors need its shapes
                shift = 0 if round_ < config.warmup else round_ % len(kinds)
                app_done = False
                for kind in kinds[shift:] + kinds[:shift]:
                    if kind.name == APP:
                        seqs, mark, sending = await driver.transition()
                        app_done = True
                    else:
                        shape = driver.messages[-1 if app_done else -2]
                        seqs, mark, sending = await driver.floor_send(kind.group, shape)
                    deadline = time.monotonic() + config.timeout_s
                    kind.timeouts += not await kind.tracker.wait_all(seqs, size, deadline)
                    if round_ >= config.warmup:
                        kind.measured.append(seqs)
                        kind.send_ms.append(sending)
                        kind.marks.update(dict.fromkeys(seqs, mark))
    finally:
        for kind in kinds:
            await _close(kind.listeners, config.close_concurrency, 0)
        await asyncio.sleep(config.settle_s)
    shapes = driver.messages[config.warmup :]
    per_transition = sum(map(len, shapes)) / len(shapes)
    found = {}
    for kind in kinds:
        found[kind.name] = {
            **_analyse(kind.name, kind.listeners, kind.measured, kind.marks, size),
            "connect_s": round(kind.connect_s, 2),
            "timeouts": kind.timeouts,
            "group_messages_per_transition": round(per_transition, 2),
            # ms from the mark until the sender's last group_send returned, in order
            "send_ms": kind.send_ms,
        }
    return found


def groups_clear(
    *, redis_url: str, prefix: str, groups: list[str], wait_s: float = 12.0
) -> dict[str, int]:
    """Members left in each of `groups` once every client has gone; then drop the groups.

    Every consumer leaves its groups on disconnect, so what is still there after `wait_s`
    (longer than daphne's 10 s before it kills a consumer that will not stop) is a
    membership the server failed to discard: channels-redis keeps sending to it until
    its `group_expiry`. Reads channels-redis's key layout (`<prefix>:group:<name>`).
    """
    import redis

    left = group_members(redis_url=redis_url, prefix=prefix, groups=groups, wait_s=wait_s)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.delete(*(f"{prefix}:group:{group}" for group in groups))
    finally:
        client.close()
    return left


def group_members(
    *, redis_url: str, prefix: str, groups: list[str], wait_s: float = 12.0
) -> dict[str, int]:
    """Members left in each of `groups`, waiting up to `wait_s` for them all to leave."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = {group: f"{prefix}:group:{group}" for group in groups}
    deadline = time.monotonic() + wait_s
    try:
        while True:
            left = {group: client.zcard(key) for group, key in keys.items()}
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(0.5)
    finally:
        client.close()


@dataclass
class _Driver:
    """`bench/ws_driver.py` in a process of its own, one command at a time over pipes."""

    command: list[str]
    env: dict
    log: Path
    user_id: int
    workflow_id: str
    app_seq: int = 0
    floor_seq: dict[str, int] = field(default_factory=dict)  # last seq sent, by group
    process: asyncio.subprocess.Process | None = None
    # Per transition: the messages its broadcast sent to the workflow's group, as the
    # byte sizes of the frames in each.
    messages: list[list[list[int]]] = field(default_factory=list)

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:  # the child keeps its own descriptor
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=self.env,
            )

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            process.stdin.write(b'{"op": "quit"}\n')
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _call(self, command: dict) -> dict:
        process = self.process
        process.stdin.write(json.dumps(command).encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line:
            raise BenchError(f"the driver exited; see {self.log}")
        answer = json.loads(line)
        if "error" in answer:
            raise BenchError(f"driver: {answer['error']}")
        return answer

    async def transition(self) -> tuple[list[int], float, float]:
        """Complete the current phase: (seqs of the events it committed, commit time, ms
        its broadcast took after the commit)."""
        answer = await self._call(
            {"op": "transition", "workflow_id": self.workflow_id, "user_id": self.user_id}
        )
        seqs = list(range(self.app_seq + 1, answer["last_seq"] + 1))
        frames = sum(len(message) for message in answer["messages"])
        if not seqs or frames != len(seqs):
            raise BenchError(
                f"transition committed events {seqs} but sent {frames} frames to the "
                f"workflow's group: {answer}"
            )
        self.app_seq = answer["last_seq"]
        self.messages.append(answer["messages"])
        return seqs, answer["mark"], answer["send_ms"]

    async def floor_send(
        self, group: str, messages: list[list[int]]
    ) -> tuple[list[int], float, float]:
        """Send `messages` (frame sizes) to a floor group: (seqs, send time, ms it took)."""
        first = self.floor_seq.get(group, 0) + 1
        answer = await self._call(
            {"op": "floor", "group": group, "first_seq": first, "messages": messages}
        )
        self.floor_seq[group] = answer["last_seq"]
        return list(range(first, answer["last_seq"] + 1)), answer["mark"], answer["send_ms"]


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """No collector pauses in the clients while they time frames (the server keeps its own)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def _connect(
    url: str, clients: int, token: str, tracker: Tracker, concurrency: int
) -> list[Listener]:
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(concurrency)

    async def one() -> Listener:
        async with gate:
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Token {token}"},
                ping_interval=None,  # no client pings: only the server's frames are timed
                proxy=None,  # 127.0.0.1 only, whatever the environment says
                open_timeout=60,
                compression=None,
            )
            while True:  # replayed frames (none: ?after= is the last seq), then replay.done
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame.get("type") == "replay.done":
                    break
        listener = Listener(ws=ws)
        listener.task = asyncio.create_task(_listen(listener, tracker))
        return listener

    listeners = await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True)
    failed = [x for x in listeners if isinstance(x, BaseException)]
    opened = [x for x in listeners if not isinstance(x, BaseException)]
    if failed:
        await _close(opened, concurrency, 0)
        raise BenchError(f"{len(failed)} of {clients} websocket clients failed: {failed[0]!r}")
    return opened


async def _listen(listener: Listener, tracker: Tracker) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in listener.ws:
            now = time.time()  # first, before any work of this client
            frame = json.loads(raw)
            listener.received.append((now, frame, len(raw)))
            seq = frame.get("seq")
            if seq is not None:
                tracker.seen(seq)
    except ConnectionClosed:
        pass


async def _close(listeners: list[Listener], concurrency: int, settle_s: float) -> None:
    """Close a few at a time (`concurrency` 0: all at once), then give the server time to
    finish their disconnects.

    A whole series closing at once would measure a disconnect storm (every consumer's
    group_discard at the same moment) in the next series instead of its own fan-out.
    """
    gate = asyncio.Semaphore(concurrency or max(len(listeners), 1))

    async def one(listener: Listener) -> None:
        async with gate:
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(listener.ws.close(), 10)
        if listener.task is not None:
            listener.task.cancel()

    await asyncio.gather(*(one(x) for x in listeners), return_exceptions=True)
    await asyncio.sleep(settle_s)


def _analyse(
    kind: str,
    listeners: list[Listener],
    measured: list[list[int]],
    marks: dict[int, float],
    clients: int,
) -> dict:
    expected = [seq for seqs in measured for seq in seqs]
    lo, hi = expected[0], expected[-1]
    latencies_ns: list[int] = []
    last_frame_ns: list[int] = []  # per client and transition: receipt of its last frame
    fan_out: dict[int, float] = {}  # per transition: when the last client had it
    first_in: dict[int, float] = {}  # per transition: when the first client had it
    lost = duplicates = out_of_order = other_frames = 0
    at_lag_ns: list[int] = []
    last_of = {seqs[-1] for seqs in measured}
    sizes_by_seq: dict[int, int] = {}
    for listener in listeners:
        got = []
        for t, frame, size in listener.received:
            seq = frame.get("seq")
            if seq is None:
                other_frames += 1  # heartbeat, ai.delta: not persisted, not timed
                continue
            if not lo <= seq <= hi:
                continue
            got.append(seq)
            latency = t - marks[seq]
            latencies_ns.append(round(latency * 1e9))
            sizes_by_seq.setdefault(seq, size)
            if seq in last_of:
                last_frame_ns.append(round(latency * 1e9))
                fan_out[seq] = max(fan_out.get(seq, 0.0), latency)
                first_in[seq] = min(first_in.get(seq, latency), latency)
            if kind == APP and listener is listeners[0]:
                at = datetime.fromisoformat(frame["at"]).timestamp()
                at_lag_ns.append(round((marks[seq] - at) * 1e9))
        counts = Counter(got)
        lost += sum(1 for seq in expected if seq not in counts)
        duplicates += sum(c - 1 for c in counts.values() if c > 1)
        out_of_order += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    stats = Stats.of(latencies_ns) if latencies_ns else None
    result = {
        "clients": clients,
        "transitions": len(measured),
        "frames_per_transition": round(len(expected) / len(measured), 2),
        "frames_expected": len(expected) * clients,
        "frames_timed": len(latencies_ns),
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "untimed_frames": other_frames,
        "sizes": [[sizes_by_seq.get(seq, 0) for seq in seqs] for seqs in measured],
        **(asdict(stats) if stats else {}),
        "last_frame": asdict(Stats.of(last_frame_ns)) if last_frame_ns else None,
        # ms until the last client had it, transition by transition, in order
        "all_clients_ms": [
            round(fan_out[seqs[-1]] * 1e3, 2) for seqs in measured if seqs[-1] in fan_out
        ],
        # ms until the first client had it, same order
        "first_client_ms": [
            round(first_in[seqs[-1]] * 1e3, 2) for seqs in measured if seqs[-1] in first_in
        ],
        "all_clients": asdict(Stats.of([round(v * 1e9) for v in fan_out.values()]))
        if fan_out
        else None,
    }
    if at_lag_ns:
        result["event_at_to_commit"] = asdict(Stats.of(at_lag_ns))
    return result


def _target(name: str, app: dict, baseline: str, floor: dict, config: WsConfig) -> dict:
    ratio_p99 = app["p99_ms"] / floor["p99_ms"]
    clean = all(app[k] == 0 and floor[k] == 0 for k in ("lost", "duplicates", "out_of_order"))
    return {
        "ratio": f"ws_{app['clients']}_clients_p99_vs_floor",
        "value": round(ratio_p99, 3),
        "op": "<=",
        "limit": config.limit_p99_ratio,
        "measured": name,
        "baseline": baseline,
        "limit_p99_ratio": config.limit_p99_ratio,
        "p50_ratio": round(app["p50_ms"] / floor["p50_ms"], 3),
        "p99_ratio": round(ratio_p99, 3),
        "lost": app["lost"] + floor["lost"],
        "passed": ratio_p99 <= config.limit_p99_ratio and clean,
    }
