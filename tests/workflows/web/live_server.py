"""Serve topdog.asgi under daphne against an existing test database.

`python -m tests.workflows.web.live_server --port N --database NAME` is what the browser
tests start in a subprocess: a real ASGI server with websockets, talking to the database
the test process created, with its own channel layer (so events caused by requests it
serves reach the websockets it serves). Beside it, as `manage.py serve` runs it on the
embedded default, the task worker works autopilot runs in the same process, so their
`ai.run` and `ai.delta` frames reach the same websockets.
"""

import argparse
import os
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True, help="NAME of the test database.")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "topdog.settings")
    import django
    from django.conf import settings

    django.setup()
    # The same dict every connection is built from; no connection is open yet.
    settings.DATABASES["default"]["NAME"] = args.database
    # The suite stores test users' passwords with this hasher (tests/conftest.py).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from django.utils.module_loading import import_string

    from ai_orchestration.inprocess_worker import worker_run

    server = Server(
        application=import_string(settings.ASGI_APPLICATION),
        endpoints=build_endpoint_description_strings(host="127.0.0.1", port=args.port),
        signal_handlers=False,  # the worker, on this main thread, takes SIGTERM
    )
    threading.Thread(target=server.run, name="daphne", daemon=True).start()
    worker_run(interval=0.1, verbosity=0)


if __name__ == "__main__":
    main()
