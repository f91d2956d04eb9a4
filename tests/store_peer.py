"""Another process for the store tests: it starts stored work, or reads results by id.

``python store_peer.py URL COMMAND ...`` prints one JSON line per event on stdout:

- ``wait ID``: the state it first sees, then ``{"value": ...}`` or ``{"error": type, "message",
  "traceback"}`` once the result is in (awaited on an asyncio loop);
- ``get ID``: the same, with a blocking ``get()``;
- ``cancel ID``: cancels the work, then reports how it ended;
- ``serve GATE``: starts thread work with ``store=`` that reports progress and waits (checking for
  cancellation) until the file ``GATE`` exists, prints its id, and waits for its end;
- ``serve-forever``: starts such work that never ends, prints its id and sleeps (to be killed).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import asyncbridge as ab

try:  # serves redis:// URLs (the asyncbridge.stores entry points would import it on first use)
    import asyncbridge.contrib.redis_store
except ImportError:  # no redis-py: the SQLite tests need none
    pass


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def outcome(h: ab.Result[Any]) -> None:
    assert h.wait(60)
    if h.cancelled():
        say(error="CancelledError", state=str(h.state))
        return
    exc = h.exception(0)
    if exc is None:
        say(value=h.result(0), state=str(h.state))
    else:
        say(error=type(exc).__name__, message=str(exc), traceback=h.traceback, state=str(h.state))


def wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        ab.checkpoint()
        time.sleep(0.01)  # a file from another process: nothing here can wake us sooner
    return "released"


def main(url: str, command: str, *args: str) -> None:
    store = ab.ResultStore(url)
    if command in ("wait", "get", "cancel"):
        try:
            h: ab.Result[Any] = ab.Result(args[0], store=store)
        except ab.UnknownResult as exc:
            say(unknown=str(exc))
            return
        say(seen=str(h.state), info=h.info if h.state == "PROGRESS" else None)
        if command == "cancel":
            h.cancel()
        if command == "wait":

            async def wait() -> None:
                try:
                    await h
                except BaseException:
                    pass

            asyncio.run(wait())
        outcome(h)
    elif command == "serve":

        def work(gate: str) -> str:
            ab.report_progress(step=1)
            return wait_for_file(gate)

        h = ab.task(engine="thread", store=store)(work).delay(args[0])
        say(id=h.id)
        outcome(h)
    elif command == "serve-forever":
        h = ab.task(engine="thread", store=store)(wait_for_file).delay("/nonexistent/never")
        say(id=h.id)
        time.sleep(3600)


if __name__ == "__main__":
    main(*sys.argv[1:])
