"""`python -m tests.ai_orchestration.faults.pool_probe N`: a process with a fresh pool.

With DATABASE_URL, PGAPPNAME and DJANGO_SETTINGS_MODULE set by the test: it puts N
connections idle in its pool (taken at once, then given back), prints "ready", waits for
a line on standard input (the test ends its connections meanwhile), then runs N + 1
queries, each on a thread of its own, and prints "ok", or the first error.
"""

import sys
import threading

import django
from django.db import connection


def _on_a_thread(fn) -> BaseException | None:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except Exception as exc:
            raised.append(exc)
        finally:
            connection.close()  # back to the pool

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    return raised[0] if raised else None


def main() -> None:
    django.setup()
    idle = int(sys.argv[1])
    together = threading.Barrier(idle)

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def hold() -> None:
        select_one()
        together.wait(30)

    threads = [threading.Thread(target=_on_a_thread, args=(hold,)) for _ in range(idle)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(idle + 1):
        error = _on_a_thread(select_one)
        if error is not None:
            print(f"error {type(error).__name__}: {error}", flush=True)
            return
    print("ok", flush=True)


if __name__ == "__main__":
    main()
