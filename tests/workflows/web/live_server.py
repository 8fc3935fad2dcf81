"""Serve topdog.asgi under daphne against an existing test database.

`python -m tests.workflows.web.live_server --port N --database NAME` is what the browser
tests start in a subprocess: a real ASGI server with websockets, talking to the database
the test process created, with its own channel layer (so events caused by requests it
serves reach the websockets it serves).
"""

import argparse
import os


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

    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["--bind", "127.0.0.1", "--port", str(args.port), "topdog.asgi:application"]
    )


if __name__ == "__main__":
    main()
