"""A writer (or reader) process for the store fault tests (tests/stress/test_store_faults.py).

``python store_writer.py URL COMMAND ...`` prints one JSON line per event on stdout (each written
whole, flushed), and waits for the test's go-ahead as a line on stdin where a command says so:

- ``churn TAG``: prints ``{"ready": pid}``, waits for a line, opens the store (not before: until
  then it has no connection to the file), then stores results without end, four
  tasks at a time (``ab.task(engine="thread", store=URL)``), each with progress reports and an
  outcome of its own size (:func:`payload`, some of 100 KB; every 7th task fails); after ``get()``
  returned, ``{"stored": id, "i": i, "made_at": t}`` (or ``"failed": true``). It is killed.
- ``batch TAG N``: starts N such tasks whose work waits for the go-ahead, prints
  ``{"started": id, "i": i}`` for each, then ``{"ready": pid}``; after the line, lets them run and
  prints ``{"stored": ...}`` for each, then ``{"done": N}``, and exits.
- ``hold``: one task that reports ``{"step": 1}``, waits for a line, reports ``{"step": 2}``, waits
  for a line, returns ``"released"``; prints ``{"started": id}``, then its outcome.
- ``follow ID``: binds ``ab.Result(ID, store=URL)``, prints ``{"bound": state}``, then
  ``{"following": 2}`` once the watcher brought progress step 2, then the outcome of a ``get()``
  bounded by ``FOLLOW_BOUND`` seconds (``{"timeout": ...}`` if it did not end by then).
- ``read``: reads ``{"id", "tag", "i"}`` lines until ``end``, binds each as ``ab.Result(id, store=URL)``,
  prints ``{"following": n}``, then for each result ``{"id", "ok", "latency"}`` once all arrived (or
  ``{"id", "missing": ...}``): ``ok`` is its exact expected value, ``latency`` the seconds from the
  end of the work (``made_at``) to the moment this process saw the outcome.

Values are a function of ``(tag, i)`` and the moment the work ended, so the test can check each
one read back for its exact value (:func:`expected`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

import asyncbridge as ab

IN_FLIGHT = 4  # churn: tasks stored at once by one writer (four threads writing)
REPORTS = 3  # progress reports per task
FAIL_EVERY = 7  # task i fails when i % FAIL_EVERY == 3
SIZES = (0, 10, 1_000, 10_000)  # bytes of a payload (every 8th: LARGE)
LARGE = 100_000
HANG = 30.0  # a hang guard only
FOLLOW_BOUND = float(os.environ.get("STORE_WRITER_FOLLOW_BOUND", HANG))


def say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def go_ahead() -> None:
    if not sys.stdin.readline():
        raise SystemExit("stdin closed before the go-ahead")


def size(tag: str, i: int) -> int:
    if i % 8 == 0:
        return LARGE
    digest = hashlib.sha256(f"size:{tag}:{i}".encode()).digest()
    return SIZES[digest[0] % len(SIZES)]


def payload(tag: str, i: int) -> bytes:
    """``size(tag, i)`` bytes that differ with ``(tag, i)`` throughout."""
    seed = hashlib.sha256(f"{tag}:{i}".encode()).digest()
    n = size(tag, i)
    return (seed * (n // len(seed) + 1))[:n]


def expected(tag: str, i: int, made_at: float) -> dict[str, Any]:
    """The value task ``i`` of writer ``tag`` returned."""
    return {"tag": tag, "i": i, "payload": payload(tag, i), "made_at": made_at}


def failure_message(tag: str, i: int) -> str:
    return f"task {i} of {tag} fails on purpose"


def work(tag: str, i: int, gate: threading.Event | None = None) -> dict[str, Any]:
    if gate is not None:
        gate.wait(HANG)
    for step in range(REPORTS):  # reports of varied sizes too (each overwrites the record)
        ab.report_progress(step=step, blob=payload(tag, i + step + 1))
    if i % FAIL_EVERY == 3:
        raise ValueError(failure_message(tag, i))
    return expected(tag, i, time.time())


def report(h: ab.Result[dict[str, Any]], i: int) -> None:
    """Wait for ``h``; once ``get()`` returned, its outcome is stored: say so."""
    try:
        value = h.get(timeout=HANG)
    except ValueError:
        say(stored=h.id, i=i, failed=True)
    else:
        say(stored=h.id, i=i, made_at=value["made_at"])


def churn(url: str, tag: str) -> None:
    say(ready=os.getpid())
    go_ahead()
    task = ab.task(engine="thread", store=url)(work)  # the store opened now: no connection before
    i = 0
    while True:
        batch = [(task.delay(tag, i + k), i + k) for k in range(IN_FLIGHT)]
        for h, j in batch:
            report(h, j)
        i += IN_FLIGHT


def batch(url: str, tag: str, n: int) -> None:
    task = ab.task(engine="thread", store=url)(work)
    gate = threading.Event()
    handles = []
    for i in range(n):
        h = task.delay(tag, i, gate)
        say(started=h.id, i=i)
        handles.append(h)
    say(ready=os.getpid())
    go_ahead()
    gate.set()
    for i, h in enumerate(handles):
        report(h, i)
    say(done=n)


def outcome(h: ab.Result[Any], bound: float) -> None:
    if not h.wait(bound):
        say(timeout=bound, state=str(h.state))
        return
    exc = h.exception(0)
    if exc is None:
        say(value=h.result(0), state=str(h.state))
    else:
        say(error=type(exc).__name__, message=str(exc), state=str(h.state))


def hold(url: str) -> None:
    steps = [threading.Event(), threading.Event()]

    def two_steps() -> str:
        for n, step in enumerate(steps, 1):
            ab.report_progress(step=n)
            step.wait(HANG)
        return "released"

    h = ab.task(engine="thread", store=url)(two_steps).delay()
    say(started=h.id)
    for step in steps:
        go_ahead()
        step.set()
    outcome(h, HANG)


def follow(url: str, ident: str) -> None:
    h: ab.Result[Any] = ab.Result(ident, store=url)
    second = threading.Event()

    def progressed(meta: dict[str, Any]) -> None:  # called by the watcher thread
        if meta.get("step") == 2:
            second.set()

    h.on_progress(progressed)
    say(bound=str(h.state))
    if second.wait(HANG):
        say(following=2)
    outcome(h, FOLLOW_BOUND)


def read(url: str) -> None:
    wanted: list[tuple[ab.Result[dict[str, Any]], str, int]] = []
    seen: dict[str, float] = {}
    arrived = threading.Semaphore(0)

    def arrival(h: ab.Result[Any]) -> None:
        seen[h.id] = time.time()
        arrived.release()

    for line in sys.stdin:
        if line.strip() == "end":
            break
        item = json.loads(line)
        h: ab.Result[dict[str, Any]] = ab.Result(item["id"], store=url)
        h.add_done_callback(arrival)
        wanted.append((h, item["tag"], item["i"]))
    say(following=len(wanted))
    deadline = time.monotonic() + HANG
    for _ in wanted:
        arrived.acquire(timeout=max(0.0, deadline - time.monotonic()))
    for h, tag, i in wanted:
        if not h.done():
            say(id=h.id, missing=str(h.state))
            continue
        try:
            value = h.get(timeout=0)
        except ValueError as exc:
            say(id=h.id, ok=i % FAIL_EVERY == 3 and str(exc) == failure_message(tag, i), latency=None)
        else:
            ok = value == expected(tag, i, value["made_at"]) and i % FAIL_EVERY != 3
            say(id=h.id, ok=ok, latency=seen[h.id] - value["made_at"])


def main(url: str, command: str, *args: str) -> None:
    if command == "churn":
        churn(url, args[0])
    elif command == "batch":
        batch(url, args[0], int(args[1]))
    elif command == "hold":
        hold(url)
    elif command == "follow":
        follow(url, args[0])
    elif command == "read":
        read(url)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
