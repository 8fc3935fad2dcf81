"""The printed tables (one per part) and the environment recorded beside the numbers."""

import os
import platform
from importlib.metadata import version

import psycopg


def tables(results: dict) -> str:
    """Every part's table, then one line of verdicts."""
    makers = {
        "api": table,
        "ws": ws_table,
        "prompt": prompt_table,
        "peers": peers_table,
        "sandbox": sandbox_table,
        "graph": graph_table,
    }
    blocks = [
        f"{part}: FAILED, no figures ({results[part]['error']})"
        if "error" in results[part]
        else makers[part](results[part])
        for part in results["parts"]
    ]
    verdicts = ", ".join(
        f"{t['part']} {t['measured']}: {'PASS' if t['passed'] else 'MISS'}"
        for t in results["targets"]
    )
    env = results["environment"]
    blocks.append(
        f"Targets: {verdicts}.\nPostgreSQL {env['postgresql']}; Django {env['django']}; "
        f"daphne {env['daphne']}; Python {env['python']}; {env['cpus']} CPUs; load at end "
        f"{_load(env)}. {results['duration_s']} s in all"
        f"{' (--quick)' if results['quick'] else ''}."
    )
    return "\n\n".join(blocks)


def table(results: dict) -> str:
    """The api part: one line per measured series, its floor, the ratio and the verdict."""
    series = results["series"]
    targets = {t["measured"]: t for t in results["targets"]}
    baselines = {name: info["baseline"] for name, info in series.items() if info["baseline"]}
    names = [
        *[n for n in series if not n.startswith("floor: ")],
        *[n for n in series if n.startswith("floor: ")],
    ]
    name_width = max(len("endpoint"), *(len(n) for n in names))
    base_width = max(len("floor"), *(len(b) for b in baselines.values()))
    header = (
        f"{'endpoint':<{name_width}} {'n':>5} {'sql':>4} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'floor':<{base_width}} {'p50 ms':>7} {'p99 ms':>7} | {'ratio p50':>9} {'p99':>6} | "
        f"{'target':<7} result"
    )
    rule = "-" * len(header)
    lines = ["api: IDE endpoints beside bare-view floors", rule, header, rule]
    for name in names:
        s = series[name]
        sql = "" if s["sql_statements"] is None else str(s["sql_statements"])
        line = (
            f"{name:<{name_width}} {s['n']:>5} {sql:>4} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} |"
        )
        baseline = baselines.get(name)
        if baseline:
            b = series[baseline]
            line += (
                f" {baseline:<{base_width}} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} |"
                f" {s['p50_ms'] / b['p50_ms']:>8.2f}x {s['p99_ms'] / b['p99_ms']:>5.2f}x |"
            )
            target = targets.get(name)
            if target:
                verdict = "PASS" if target["passed"] else "MISS"
                line += f" {'<=' + format(target['limit_p50_ratio'], '.1f') + 'x':<7} {verdict}"
        lines.append(line)
    lines.append(rule)
    env = results["environment"]
    lines += [
        f"PostgreSQL {env['postgresql']}; daphne {env['daphne']}; Django {env['django']}; "
        f"Python {env['python']}; {env['cpus']} CPUs; cache and channel layer: {env['redis']}.",
        f"complete-phase: {results['complete_phase_move']}; status @ N: {results['scale_note']}.",
        f"complete-phase over the one-insert floor (its floor before issue 11): "
        f"{results['complete_phase_vs_floor_1insert']:.2f}x at p50.",
        "Targets compare p50. sql: statements sent to PostgreSQL per request, BEGIN and "
        f"COMMIT included. Client: {results['client']['kind']}, "
        f"{results['client']['connections_opened']} connection(s) opened. "
        f"{results['duration_s']} s in all.",
    ]
    return "\n".join(lines)


def environment(*, database_url: str, redis_url: str) -> dict:
    with psycopg.connect(database_url) as connection:
        server_version = connection.execute("SHOW server_version").fetchone()[0]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "django": version("django"),
        "djangorestframework": version("djangorestframework"),
        "daphne": version("daphne"),
        "psycopg": version("psycopg"),
        "postgresql": server_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_end": load,
        "redis": redis_url or "in-memory (no REDIS_URL)",
    }


def ws_table(results: dict) -> str:
    """The ws part: per client count, commit-to-receipt beside the bare consumer's floor."""
    series = results["series"]
    targets = {t["measured"]: t for t in results["targets"]}
    header = (
        f"{'clients':>7} {'rounds':>6} {'frames':>6} | {'app p50':>7} {'p99 ms':>7} "
        f"{'last':>6} | {'floor p50':>9} {'p99 ms':>7} {'last':>6} | {'ratio p50':>9} "
        f"{'p99':>6} | {'lost':>4} {'dup':>3} {'order':>5} | {'target':<9} result | "
        f"{'floor+hop p50':>13} {'p99':>6}"
    )
    rule = "-" * len(header)
    env = results["environment"]
    lines = [
        f"ws: transition commit -> websocket receipt, beside a bare consumer's group_send "
        f"(channel layer: {env['channel_layer']})",
        rule,
        header,
        rule,
    ]
    footer = []
    for name, app in series.items():
        if name not in targets:
            continue
        floor = series[app["baseline"]]
        hop = series[name.replace("app @", "floor+hop @")]
        target = targets[name]
        everyone = (app, floor, hop)
        bad = {k: sum(s[k] for s in everyone) for k in ("lost", "duplicates", "out_of_order")}
        lines.append(
            f"{app['clients']:>7} {app['transitions']:>6} {app['frames_timed']:>6} | "
            f"{app['p50_ms']:>7.2f} {app['p99_ms']:>7.2f} {app['all_clients']['p50_ms']:>6.1f} | "
            f"{floor['p50_ms']:>9.2f} {floor['p99_ms']:>7.2f} "
            f"{floor['all_clients']['p50_ms']:>6.1f} | "
            f"{target['p50_ratio']:>8.2f}x {target['p99_ratio']:>5.2f}x | "
            f"{bad['lost']:>4} {bad['duplicates']:>3} {bad['out_of_order']:>5} | "
            f"{'p99<=' + format(target['limit_p99_ratio'], '.1f') + 'x':<9} "
            f"{'PASS' if target['passed'] else 'MISS':<6} | "
            f"{hop['p50_ms']:>13.2f} {hop['p99_ms']:>6.2f}"
        )
        sizes = [size for sizes in app["sizes"] for size in sizes]
        lag = app.get("event_at_to_commit")
        footer.append(
            f"{app['clients']} clients: connected in {app['connect_s']:.1f} s (app), "
            f"{floor['connect_s']:.1f} s and {hop['connect_s']:.1f} s (floors); "
            f"{app['frames_per_transition']:g} frames of {min(sizes)}-{max(sizes)} bytes in "
            f"{app['group_messages_per_transition']:g} group message(s) per transition; "
            f"sender done {_median(app['send_ms']):.1f} ms (app) and "
            f"{_median(floor['send_ms']):.1f} ms (floor) after its mark, p50"
            + (f"; event `at` {lag['p50_ms']:.1f} ms before the commit" if lag else "")
            + f"; heartbeats {app['untimed_frames']}; timeouts "
            f"{sum(s['timeouts'] for s in everyone)}."
        )
    lines.append(rule)
    lines += footer
    server = results["server_log"]
    stale = results.get("stale_group_members")
    lines.append(
        f"daphne logged {server['exceptions']} application exception(s) and killed "
        f"{server['killed']} consumer(s) that would not stop ({server['path']})"
        + (
            f"; group memberships left after every client closed: {sum(stale.values())}."
            if stale is not None
            else "."
        )
    )
    lines.append(
        "ms from the commit (app; taken in an on_commit hook before the broadcast's) or the "
        "first group_send (floors) to each client's recv, all clients and frames; last: "
        "when the last client had the transition's last frame, p50. The three sets stay "
        "connected together and take turns. floor: bare consumer; floor+hop: the same with "
        "channels' default dispatch, which hops to the sync thread (close_old_connections) "
        "before every message, as TopDog's consumers do. Target: app p99 within "
        f"{results['config']['limit_p99_ratio']:.1f}x the floor's at each count, no lost, "
        f"duplicate or out-of-order frame. Client: {env['client']}; driver: {env['driver']}. "
        f"{results['duration_s']} s."
    )
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def prompt_table(results: dict) -> str:
    """The prompt part: build time by history length, beside the 10-message build."""
    series = results["series"]
    targets = {t["measured"]: t for t in results["targets"]}
    name_width = max(len("window (model) @ history"), *(len(n) for n in series))
    header = (
        f"{'window (model) @ history':<{name_width}} {'n':>5} {'sql':>4} {'kept':>5} "
        f"{'tokens':>7} {'db ms':>6} {'p50 ms':>7} {'p99 ms':>7} | {'ratio p50':>9} {'p99':>6} | "
        f"{'target':<7} result"
    )
    rule = "-" * len(header)
    lines = [
        "prompt: prompt_request_build in process, by messages of CODE_WRITER history",
        rule,
        header,
        rule,
    ]
    for name, s in series.items():
        line = (
            f"{name:<{name_width}} {s['n']:>5} {s['sql_statements']:>4} "
            f"{s['history_in_prompt']:>5} {s['estimated_input_tokens']:>7} "
            f"{s['db_ms_p50']:>6.2f} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} |"
        )
        if s["baseline"]:
            b = series[s["baseline"]]
            line += f" {s['p50_ms'] / b['p50_ms']:>8.2f}x {s['p99_ms'] / b['p99_ms']:>5.2f}x |"
            target = targets.get(name)
            if target:
                verdict = "PASS" if target["passed"] else "MISS"
                line += f" {'<=' + format(target['limit_p50_ratio'], '.1f') + 'x':<7} {verdict}"
        lines.append(line)
    lines.append(rule)
    lines.append(
        "kept: history messages in the prompt; tokens: the builder's estimate of the prompt; "
        "sql: statements per build; db ms: of a build, in the database (p50 of 20 more). "
        "Ratios against the 10-message build of the same window, "
        "but 128k @ 10,000 against 128k @ 1,000 (both fill the window); "
        f"targets compare p50. Messages of {results['config']['min_chars']}-"
        f"{results['config']['max_chars']} characters. {results['duration_s']} s."
    )
    return "\n".join(lines)


def _load(env: dict) -> str:
    load = env.get("load_average_at_end")
    return "/".join(f"{x:.2f}" for x in load) if load else "unknown"


def peers_table(results: dict) -> str:
    """The peers part: one step of each, p50/p99, and what a step writes."""
    from bench.peers import writes_summary

    series = results["series"]
    target = results["targets"][0]
    header = (
        f"{'peer':<16} {'steps':>5} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} | p50 ms by phase"
    )
    rule = "-" * 110
    lines = [
        "peers: one workflow step, interleaved step by step, in this process on the same "
        "PostgreSQL",
        rule,
        header,
        rule,
    ]
    for name, s in series.items():
        phases = " ".join(f"{p[:4]} {v:.2f}" for p, v in s["p50_ms_by_phase"].items())
        lines.append(
            f"{name:<16} {s['n']:>5} {s['p50_ms']:>7.2f} {s['p90_ms']:>7.2f} "
            f"{s['p99_ms']:>7.2f} | {phases}"
        )
    lines.append(rule)
    lines += [writes_summary(name, s["writes"]) for name, s in series.items()]
    lines.append(
        f"TopDog/LangGraph p50 {target['p50_ratio']:.2f}x (p99 {target['p99_ratio']:.2f}x), "
        f"target <= {target['limit_p50_ratio']:.1f}x: {'PASS' if target['passed'] else 'MISS'}; "
        f"TopDog/django-fsm-log p50 {results['fsm_ratio_p50']:.2f}x (no target). TopDog's "
        f"channel layer: {results['channel_layer']} ({results['environment']['redis']}); "
        f"sandbox {results['environment']['sandbox']}. topdog: workflow_phase_complete with "
        "the phase's example evidence, full audit (phase result, message, events, handoff, "
        "role context; IMPLEMENTATION adds its static-check CheckRun), broadcast after the "
        "commit (on this process's sender thread; the bench waits for it, untimed, after "
        f"each TopDog step, p50 {series['topdog']['after_step_p50_ms']:.2f} ms, so that it "
        "does not run inside the next peer's timed step). langgraph: graph.invoke(None, "
        "thread, durability='sync') running one node "
        "(interrupt_after every node): reads the latest checkpoint, writes the node's writes "
        "and the next checkpoint. django-fsm-log: select_for_update + complete(by=user) + "
        f"save() + StateLog INSERT in one transaction. {results['duration_s']} s."
    )
    return "\n".join(lines)


def sandbox_table(results: dict) -> str:
    """The sandbox part: three measurements, each with its target."""
    overhead, checks, cache = results["overhead"], results["static_checks"], results["cache"]
    return "\n".join(
        [
            "sandbox: bubblewrap overhead, static checks, dependency cache",
            "-" * 100,
            f"pytest on two tiny tests, p50 of {overhead.get('runs', '?')} alternating runs: "
            f"direct {overhead['direct_ms']:.0f} ms, bubblewrap {overhead['bwrap_ms']:.0f} ms: "
            f"{overhead['ratio']:.2f}x, {overhead['delta_ms']:+.0f} ms (target <= 1.3x or "
            "<= +150 ms).",
            f"static checks of {checks['files']} files: p50 {checks['p50_ms']:.1f} ms, p90 "
            f"{checks['p90_ms']:.1f} ms, max {checks['max_ms']:.1f} ms over {checks['runs']} "
            "runs (target p50 < 50 ms).",
            f"check_run_execute, {cache['pairs']} project(s): first run (fresh mirror, setup "
            f"into /deps, tests) {cache['first_ms']:.0f} ms, second (warm mirror, cached "
            f"/deps, tests) {cache['second_ms']:.0f} ms: {cache['speedup']:.1f}x faster "
            f"(target >= 5x). Setup: {cache['setup_command']}; tests: {cache['test_command']}; "
            f"tests each run: {cache['tests']}.",
            f"{results['duration_s']} s.",
        ]
    )


def graph_table(results: dict) -> str:
    """The graph part: wall times by concurrency, and the scheduling overhead."""
    walls = results["wall_s"]
    overhead = results["overhead_ms"]
    return "\n".join(
        [
            f"graph: work items on db_worker processes, {results['call_delay_ms']} ms per call",
            f"  8 independent items, concurrency 1: {', '.join(f'{v:.2f}' for v in walls['c1'])} s",
            f"  8 independent items, concurrency 4: {', '.join(f'{v:.2f}' for v in walls['c4'])} s",
            f"  dependency finished -> dependent started (2 workers): p50 {overhead['p50']} ms, "
            f"p90 {overhead['p90']} ms, max {overhead['max']} ms ({overhead['samples']} samples)",
        ]
    )


def ratio_lines(results: dict) -> str:
    """One `RATIO <name> <value> target <op> <limit> PASS|MISS` line per target."""
    lines = []
    for t in results["targets"]:
        name = t.get("ratio") or t["measured"]
        value = t.get("value", t.get("p50_ratio"))
        op = t.get("op", "<=")
        limit = t.get("limit", t.get("limit_p50_ratio"))
        # (a limit with two decimals, e.g. 0.35, is shown whole)
        exact = name.endswith("_ms") or round(limit, 1) != limit
        shown = f"{limit:g}" if exact else f"{limit:.1f}"
        line = f"RATIO {name} {value:.3f} target {op} {shown} {'PASS' if t['passed'] else 'MISS'}"
        if t.get("note"):
            line += f"  ({t['note']})"
        lines.append(line)
    return "\n".join(lines)
