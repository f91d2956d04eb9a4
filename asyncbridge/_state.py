"""The states a handle moves through, and the one table of legal moves."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Where a handle stands, in Celery's vocabulary (``State.SUCCESS == "SUCCESS"``).

    PENDING -> STARTED -> (PROGRESS | RETRY)* -> SUCCESS | FAILURE | REVOKED. States only move
    forward; the last three are terminal and set once.
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


PENDING, STARTED, PROGRESS, RETRY = State.PENDING, State.STARTED, State.PROGRESS, State.RETRY
SUCCESS, FAILURE, REVOKED = State.SUCCESS, State.FAILURE, State.REVOKED
_TERMINAL = frozenset({SUCCESS, FAILURE, REVOKED})
_RUNNING = frozenset({STARTED, PROGRESS})
_FINISHED = frozenset({SUCCESS, FAILURE})

# The one table of legal moves. A move it lacks is a bug in an adapter and raises.
_MOVES: dict[State, frozenset[State]] = {
    PENDING: frozenset({STARTED, REVOKED, SUCCESS, FAILURE}),
    STARTED: frozenset({PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED}),
    PROGRESS: frozenset({PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED}),
    RETRY: frozenset({STARTED, REVOKED, FAILURE}),
}

# concurrent.futures' private state names, read by cf.wait and cf.as_completed through `_state`.
_CF_STATE = {
    PENDING: "PENDING",
    STARTED: "RUNNING",
    PROGRESS: "RUNNING",
    RETRY: "RUNNING",
    SUCCESS: "FINISHED",
    FAILURE: "FINISHED",
    REVOKED: "CANCELLED_AND_NOTIFIED",
}
