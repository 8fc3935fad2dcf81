"""A bench-only Django app: the django-fsm-2 + django-fsm-log peer of `./dev bench --only peers`.

Installed only by `bench.settings` when BENCH_PEERS=1 (set by bench/run.py for the peers
part), never by the service's settings.
"""
