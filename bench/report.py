"""The printed table and the environment recorded beside the numbers."""

import os
import platform
from importlib.metadata import version

import psycopg


def table(results: dict) -> str:
    """One line per measured series: its latency, its floor, the ratio and the verdict."""
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
    lines = [rule, header, rule]
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
