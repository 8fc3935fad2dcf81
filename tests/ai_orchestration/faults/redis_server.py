"""A private `redis-server` for a test that restarts Redis (never the shared one), and a
listener on its channel layer.

It runs on a port of its own (from TOPDOG_TEST_PORTS, e.g. `18400-18499`, when set; else
one the system gives), without persistence, and `restart()` stops it and starts it again
on the same port, as a Redis restart does to its clients.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from asgiref.sync import async_to_sync
from channels_redis.core import RedisChannelLayer


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port nothing listens on: in TOPDOG_TEST_PORTS (`low-high`) if set."""
    ports = os.environ.get("TOPDOG_TEST_PORTS", "")
    if ports:
        low, high = (int(p) for p in ports.split("-"))
        candidates = range(low, high + 1)
    else:
        candidates = [0]
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port in TOPDOG_TEST_PORTS={ports}")


class PrivateRedis:
    """`redis-server` on 127.0.0.1:`port`, its log in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.log_dir = log_dir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.starts += 1
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            stdout=(self.log_dir / f"redis-{self.starts}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it at once (SIGKILL: clients see their connections drop)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> "PrivateRedis":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GroupListener:
    """A channel on a Redis channel layer, joined to groups, as a websocket consumer of
    another node would be: what the workers broadcast there, in the order it came."""

    def __init__(self, url: str) -> None:
        self.layer = RedisChannelLayer(hosts=[url], capacity=1000)
        self.channel = async_to_sync(self.layer.new_channel)()
        self.messages: list[dict] = []

    def join(self, *groups: str) -> None:
        for group in groups:
            async_to_sync(self.layer.group_add)(group, self.channel)

    def drain(self, quiet: float = 0.5) -> list[dict]:
        """Everything received until nothing came for `quiet` seconds."""

        async def receive_all() -> None:
            while True:
                try:
                    message = await asyncio.wait_for(self.layer.receive(self.channel), quiet)
                except TimeoutError:
                    return
                self.messages.append(message)

        async_to_sync(receive_all)()
        return self.messages

    def seqs(self, workflow_id: str) -> list[int]:
        """The seq of every persisted event frame received for the workflow, in order."""
        return [
            frame["seq"]
            for message in self.messages
            if message.get("type") == "workflow.events"
            for frame in message["frames"]
            if frame["workflow_id"] == workflow_id
        ]
