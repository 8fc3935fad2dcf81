"""Settings of the bench server: TopDog's own, plus the floor views, with limits out of reach.

The throttle classes stay installed (their cache round trip is part of every real request),
but with a one-second window and a rate no sequential client reaches, so they never answer
429 and their per-user history stays as short as a real user's.
"""

from topdog.env import env_bool, env_int, env_str
from topdog.settings import *  # noqa: F403
from topdog.settings import CACHES, CHANNEL_LAYERS, INSTALLED_APPS, REDIS_URL, REST_FRAMEWORK

# DEBUG would record every query in memory and slow the server down.
DEBUG = False
ROOT_URLCONF = "bench.urls"

REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("BENCH_THROTTLE_RATE", "1000000/s"),
        "user": env_str("BENCH_THROTTLE_RATE", "1000000/s"),
    },
}

# The websocket bench connects hundreds of clients of one user: no per-user socket limit.
TOPDOG_WS_MAX_SOCKETS_PER_USER = env_int("TOPDOG_WS_MAX_SOCKETS_PER_USER", 0)

# Keep the bench's throttle counters and groups apart from a dev server on the same Redis.
BENCH_REDIS_PREFIX = "topdog-bench"

if REDIS_URL:
    CACHES = {"default": {**CACHES["default"], "KEY_PREFIX": BENCH_REDIS_PREFIX}}
    CHANNEL_LAYERS = {
        "default": {
            **CHANNEL_LAYERS["default"],
            "CONFIG": {**CHANNEL_LAYERS["default"]["CONFIG"], "prefix": BENCH_REDIS_PREFIX},
        }
    }

# The peers part (bench/peers.py) only: django-fsm-log and the bench's own FSM model, in
# the bench process, never in the servers. django-fsm-log's receivers listen to every
# django-fsm transition; TopDog's Workflow is on its ignore list, so TopDog's own steps
# write no StateLog row.
BENCH_PEERS = env_bool("BENCH_PEERS", False)
if BENCH_PEERS:
    INSTALLED_APPS = [*INSTALLED_APPS, "django_fsm_log", "bench.peer_app"]
    DJANGO_FSM_LOG_IGNORED_MODELS = ["workflows.models.Workflow"]
