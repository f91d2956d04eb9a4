"""asyncbridge: one awaitable, blocking-gettable, cancellable handle for work that finishes later.

``await handle`` from any asyncio loop or trio run, ``handle.get(timeout=...)`` from sync code,
callbacks, Celery-style states, and cancellation that reaches the work, for asyncio tasks,
coroutines, ``concurrent.futures`` futures and thread work alike.
"""

# No `from __future__ import annotations` here: it would add a public name.
# `X as X` is the explicit re-export that mypy --strict honours.
from ._asyncio import spawn as spawn
from ._awaiting import shield as shield
from ._compose import (
    ALL_COMPLETED as ALL_COMPLETED,
    FIRST_COMPLETED as FIRST_COMPLETED,
    FIRST_EXCEPTION as FIRST_EXCEPTION,
    as_completed as as_completed,
    gather as gather,
    race as race,
    wait as wait,
)
from ._context import (
    cancel_requested as cancel_requested,
    checkpoint as checkpoint,
    report_progress as report_progress,
)
from ._errors import (
    Cancelled as Cancelled,
    RemoteTraceback as RemoteTraceback,
    TimeLimitExceeded as TimeLimitExceeded,
    UnknownResult as UnknownResult,
    WorkerCrashed as WorkerCrashed,
)
from ._process import ProcessPool as ProcessPool, run_in_process as run_in_process
from ._result import Result as Result, State as State
from ._store import ResultStore as ResultStore, StoreError as StoreError
from ._task import AsyncTask as AsyncTask, Retry as Retry, Task as Task, task as task
from ._threads import run_in_thread as run_in_thread
from ._wrap import wrap as wrap

AsyncResult = Result  # Celery's name for the same class

__version__ = "0.1.0"

__all__ = (
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncResult",
    "AsyncTask",
    "Cancelled",
    "ProcessPool",
    "RemoteTraceback",
    "Result",
    "ResultStore",
    "Retry",
    "State",
    "StoreError",
    "Task",
    "TimeLimitExceeded",
    "UnknownResult",
    "WorkerCrashed",
    "as_completed",
    "cancel_requested",
    "checkpoint",
    "gather",
    "race",
    "report_progress",
    "run_in_process",
    "run_in_thread",
    "shield",
    "spawn",
    "task",
    "wait",
    "wrap",
)

# Reprs, tracebacks and docs say asyncbridge.Result, not asyncbridge._result.Result.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("asyncbridge._"):
        _obj.__module__ = "asyncbridge"
del _name, _obj
