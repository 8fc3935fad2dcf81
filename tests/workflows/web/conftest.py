"""A real ASGI server (daphne, websockets included) over the test database, for browsers."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO_ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the live server exited ({process.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the live server did not answer within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def live_server_url(django_db_setup):
    """`http://127.0.0.1:<port>`: daphne serving topdog.asgi on the test database.

    Its own process, so it has its own channel layer: for live events to reach a browser's
    socket, cause them with HTTP requests to this server, not by calling services here.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "live-server.log"
    port = _free_port()
    # The factory project names a GitHub repository that cannot be reached from here.
    env = {
        **os.environ,
        "TOPDOG_SERVE_STATIC": "1",
        "PYTHONUNBUFFERED": "1",
        "TOPDOG_SANDBOX": "off",
        # Autopilot runs stream slowly enough to be seen, and Claude has no key.
        "TOPDOG_OFFLINE_DELAY_MS": "15",
        "ANTHROPIC_API_KEY": "",
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.workflows.web.live_server",
                "--port",
                str(port),
                "--database",
                str(connection.settings_dict["NAME"]),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(f"{url}/accounts/login/", process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium (CHROMIUM_PATH, or `chromium` on PATH); skip when there is none."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or ""
    if not path or not Path(path).exists():
        message = "no Chromium: install the OS package (apt-get install chromium)"
        if os.environ.get("TOPDOG_REQUIRE_BROWSER"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken test
        pytest.skip(message)
    return path
