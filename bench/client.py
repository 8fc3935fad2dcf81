"""A sequential keep-alive HTTP/1.1 client that times whole request/response round trips."""

import http.client
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The i-th request of an endpoint: (method, path, body or None).
RequestFor = Callable[[int], tuple[str, str, bytes | None]]
# Checks a response body; raises BenchError when the endpoint did not do its job.
Check = Callable[[bytes], None]


class BenchError(RuntimeError):
    pass


class Client:
    """One connection, one request at a time: what is timed is latency, not throughput."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {
            "Authorization": f"Token {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.connects = 0
        self._socket = None

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, int, bytes]:
        """(ns from sending the request to having read the whole response, status, body)."""
        started = time.perf_counter_ns()
        self.connection.request(method, path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter_ns() - started
        if self.connection.sock is not self._socket:  # http.client reconnected
            self._socket = self.connection.sock
            self.connects += 1
        return elapsed, response.status, data

    def close(self) -> None:
        self.connection.close()


@dataclass
class Endpoint:
    name: str
    client: Client
    request_for: RequestFor
    check: Check | None = None
    samples_ns: list[int] = field(default_factory=list)
    calls: int = 0

    def run(self, count: int, *, record: bool = True) -> None:
        for _ in range(count):
            method, path, body = self.request_for(self.calls)
            self.calls += 1
            elapsed, status, data = self.client.call(method, path, body)
            if status != 200:
                raise BenchError(f"{self.name}: {method} {path} answered {status}: {data[:500]!r}")
            if self.check is not None:
                self.check(data)
            if record:
                self.samples_ns.append(elapsed)


def interleaved(plan: list[tuple[Endpoint, int]], *, batches: int) -> None:
    """Run every endpoint's count in `batches` rounds, rotating who goes first each round.

    Drift (a checkpoint, a noisy neighbour, a warming cache) then lands on every endpoint
    alike instead of on whichever happened to run last.
    """
    for round_ in range(batches):
        shift = round_ % len(plan)
        for endpoint, total in plan[shift:] + plan[:shift]:
            endpoint.run(total // batches + (1 if round_ < total % batches else 0))


def expect_json(**wanted: object) -> Check:
    def check(data: bytes) -> None:
        body = json.loads(data)
        for key, value in wanted.items():
            if body.get(key) != value:
                raise BenchError(f"expected {key}={value!r} in the response, got {body!r}")

    return check


@dataclass(frozen=True)
class Stats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> "Stats":
        if not samples_ns:
            raise BenchError("no samples")
        ordered = sorted(samples_ns)

        def rank(q: float) -> float:  # nearest rank: a latency some request really had
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1e6

        return cls(
            n=len(ordered),
            p50_ms=round(rank(0.50), 3),
            p90_ms=round(rank(0.90), 3),
            p99_ms=round(rank(0.99), 3),
            mean_ms=round(sum(ordered) / len(ordered) / 1e6, 3),
            min_ms=round(ordered[0] / 1e6, 3),
            max_ms=round(ordered[-1] / 1e6, 3),
        )
