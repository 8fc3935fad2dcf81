"""The websocket bench's driver: commits transitions and sends floor frames on request.

    python -m bench.ws_driver (--direct | --via-port PORT)

A process of its own, so that neither the websocket clients' event loop nor daphne's
shares a GIL with the Python work of a transition. Reads one JSON command per line on
stdin and answers one JSON line on stdout:

    {"op": "transition", "workflow_id": ..., "user_id": ...}
        -> {"mark": <commit time>, "messages": [[<frame bytes>, ...], ...], "last_seq": ...}
    {"op": "floor", "group": ..., "first_seq": ..., "messages": [[<frame bytes>, ...], ...]}
        -> {"mark": <first group_send time>, "last_seq": ...}
    {"op": "quit"}

--direct calls `bench.ws_floor` here, on the channel layer of this process's settings
(REDIS_URL: the server's Redis). --via-port calls the same functions in the server
through its bench views, for the in-memory layer. Errors answer {"error": "..."}.
"""

import argparse
import gc
import json
import sys
from collections.abc import Callable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_driver")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--direct", action="store_true")
    mode.add_argument("--via-port", type=int)
    args = parser.parse_args(argv)

    import django

    django.setup()
    ops = _direct() if args.direct else _via(args.via_port)
    # No collector pauses between a commit or send and its timestamp: this process is the
    # bench's, and a few hundred commands leave little garbage.
    gc.collect()
    gc.freeze()
    gc.disable()
    out = sys.stdout
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            answer = ops[op](**command)
        except Exception as exc:  # the bench reports it and stops
            answer = {"error": f"{op}: {exc!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def _direct() -> dict[str, Callable[..., dict]]:
    from bench import ws_floor

    return {"transition": ws_floor.transition_commit, "floor": ws_floor.floor_send}


def _via(port: int) -> dict[str, Callable[..., dict]]:
    from bench.client import Client

    client = Client(port, token="")

    def post(path: str, body: dict) -> dict:
        _, status, data = client.call("POST", path, json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"POST {path} answered {status}: {data[:500]!r}")
        return json.loads(data)

    return {
        "transition": lambda **body: post("/bench/ws/transition", body),
        "floor": lambda **body: post("/bench/ws/floor/send", body),
    }


if __name__ == "__main__":
    sys.exit(main())
