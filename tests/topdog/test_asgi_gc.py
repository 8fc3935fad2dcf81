"""The server's startup objects are frozen out of the garbage collector's full passes."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = "import gc, topdog.asgi; print(gc.get_freeze_count())"


def test_importing_the_asgi_application_freezes_what_django_and_the_apps_loaded():
    # when: a fresh process loads the ASGI application, as daphne and `serve` do
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    # then: the objects loaded so far (Django, the apps, their libraries) are frozen, so
    # a full collection in the server does not walk them
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.split()[-1])
    assert frozen > 100_000
