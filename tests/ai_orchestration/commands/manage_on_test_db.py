"""`python -m tests.ai_orchestration.commands.manage_on_test_db NAME COMMAND ARGS...`

Runs a management command in its own process against the test database NAME that the
test process created (as `tests/workflows/web/live_server.py` does for daphne): for
tests that need a real process, such as one whose stdout is a terminal.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "topdog.settings")
    import django
    from django.conf import settings

    django.setup()
    # The same dict every connection is built from; no connection is open yet.
    settings.DATABASES["default"]["NAME"] = sys.argv[1]

    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *sys.argv[2:]])


if __name__ == "__main__":
    main()
