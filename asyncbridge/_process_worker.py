"""The worker side of process work: the loop each worker process of a ``ProcessPool`` runs.

It receives a pickled task on its pipe, reports STARTED, runs the task with a ``_WorkerHandle`` as
the current work (so ``checkpoint()`` reads the shared cancel word and ``report_progress()`` sends a
message), and sends the value or the failure back (the exception pickled when it can be rebuilt, and
its traceback text always). Kept apart from the parent side (``_process.py``) because this is all a
worker process imports of the pool.

A worker's own start can fail too: multiprocessing first runs the parent's main script again in it
(as ``__mp_main__``), and a script whose top-level code starts process work (no ``if __name__ ==
'__main__':``) fails there. Left alone, that error goes to the worker's stderr and the caller only
sees the worker exit with code 1. Under forkserver, :func:`guard_main_import` (installed in the
forkserver by ``_process_boot``) catches it instead, and the worker answers each task with it.
"""

from __future__ import annotations

import math
import pickle
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from ._context import CURRENT
from ._errors import Cancelled
from ._remote import describe_failure
from ._signals import unblock_signals

if TYPE_CHECKING:
    import multiprocessing.connection as mpc
    from collections.abc import Callable, Mapping

# Messages from a worker: (kind, seq, body)
_STARTED, _DONE, _FAILED, _CANCELLED, _PROGRESS = 0, 1, 2, 3, 4
_HEADER = struct.Struct("<qd")  # task number, time limit in seconds (NaN: none)

#: The name of every worker process (multiprocessing passes it in the worker's preparation data,
#: which is how :func:`guard_main_import` tells our workers from other processes of the forkserver).
WORKER_NAME = "asyncbridge-process"

#: Raised by the pool's submit inside a worker that is still importing the main module.
NO_MAIN_GUARD = (
    "process work was started while a worker process imports the main module: multiprocessing runs "
    "the main script again in each worker process (as '__mp_main__') before the worker can run "
    "anything, so a script that starts process work from its top-level code would start it again in "
    "every worker. Put that code under `if __name__ == '__main__':`"
)

#: Why this worker could not import the main module, if it could not (see guard_main_import).
_boot_failure: BaseException | None = None


def guard_main_import() -> None:
    """Make our workers survive a failed import of the main module, to report it to the caller.

    Installed in the forkserver process only (by ``asyncbridge._process_boot``, which the pool asks
    the forkserver to preload), so it reaches the workers forked from there and nothing else. For a
    worker of ours (by its name in the preparation data), ``multiprocessing.spawn.prepare`` keeps an
    exception from the main module's import in :data:`_boot_failure` instead of dying with it, and
    :func:`worker_main` then fails every task it is given with that error. Other processes of the
    same forkserver, and any failure before the main module's import, are left exactly as they were.
    """
    from multiprocessing import spawn

    real = spawn.prepare
    if getattr(real, "_asyncbridge_guard", False):
        return

    def prepare(data: Mapping[str, Any]) -> None:
        main = data.get("init_main_from_name") or data.get("init_main_from_path")
        if data.get("name") != WORKER_NAME or main is None:
            real(data)
            return
        # Everything but the main module first, as usual (its failures stay fatal), then the main
        # module alone (prepare() imports it last anyway).
        real({k: v for k, v in data.items() if k not in _MAIN_KEYS})
        try:
            real({k: v for k, v in data.items() if k in _MAIN_KEYS})
        except BaseException as exc:  # even SystemExit from the script's top-level code
            global _boot_failure
            _boot_failure = _main_import_failed(main, exc)

    prepare._asyncbridge_guard = True  # type: ignore[attr-defined]
    spawn.prepare = prepare


_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


def _main_import_failed(main: object, exc: BaseException) -> RuntimeError:
    if isinstance(exc, RuntimeError) and str(exc) == NO_MAIN_GUARD:  # the usual case, said once
        err = RuntimeError(
            f"the worker process could not import the main module {main!r}: its top-level code starts "
            f"process work, which it would do again in every worker process (multiprocessing runs the "
            f"main script again in each worker, as '__mp_main__'). Put that code under "
            f"`if __name__ == '__main__':`"
        )
    else:
        said = " ".join(str(exc).split())  # multiprocessing's own message is indented over many lines
        err = RuntimeError(
            f"the worker process could not import the main module {main!r}, which multiprocessing "
            f"runs again in each worker process (as '__mp_main__') before it can run any task: "
            f"{type(exc).__name__}: {said}. Code that must run only once (starting process work, "
            f"say) belongs under `if __name__ == '__main__':`"
        )
    err.__cause__ = exc  # its traceback (the script's failing line) travels as the remote traceback
    return err


def _unloadable(exc: BaseException) -> RuntimeError:
    """The error for a task this worker could not unpickle, with the original message and, where
    the missing name was looked for in a main module, why it is missing there and what to do."""
    message = f"the worker could not unpickle the task: {type(exc).__name__}: {exc}"
    if isinstance(exc, AttributeError) and "'__mp_main__'" in str(exc):
        message += (
            ". A worker process imports the main script as '__mp_main__', where the code under "
            "`if __name__ == '__main__':` does not run: define what process work needs at the "
            "script's top level, outside that block, or in a module of its own"
        )
    elif isinstance(exc, AttributeError) and "'__main__'" in str(exc):
        message += (
            ". It is defined in the parent's main module, which a worker process does not import "
            "(python -c, an interactive session, a package's __main__): define it in a module of "
            "its own and import it from there"
        )
    return RuntimeError(message)


class _WorkerHandle:
    """What ``checkpoint()``, ``cancel_requested()`` and ``report_progress()`` see in a worker."""

    __slots__ = ("_cancel_word", "_deadline", "_label", "_send", "_seq", "_time_limit")

    def __init__(
        self, seq: int, cancel_word: Any, label: str, time_limit: float | None, send: Callable[[bytes], None]
    ) -> None:
        self._seq = seq
        self._cancel_word = cancel_word
        self._label = label
        self._time_limit = time_limit
        self._deadline = None if time_limit is None else time.monotonic() + time_limit
        self._send = send

    @property
    def _cancel_requested(self) -> bool:
        return bool(self._cancel_word.value == self._seq)

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None, /) -> bool:
        try:
            blob = pickle.dumps(meta)
        except Exception as exc:
            raise TypeError(f"report_progress() from a worker process needs picklable values: {exc}") from exc
        self._send(pickle.dumps((_PROGRESS, self._seq, blob)))
        return True

    def __repr__(self) -> str:
        return f"<process task {self._seq} {self._label}>"


def _describe_failure(exc: BaseException) -> bytes:
    body = describe_failure(exc)
    exc.__traceback__ = None  # its frames (and what they hold) are not kept in the worker
    return body


def worker_main(conn: mpc.Connection, cancel_word: Any) -> None:
    """The loop of one worker process: receive a task, run it, send its outcome."""
    unblock_signals()  # inherited from the manager thread that started us: terminate() must work
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    lock = threading.Lock()  # the work may report progress from threads of its own

    def send(data: bytes) -> None:
        with lock:
            conn.send_bytes(data)

    # A worker whose main module failed to import runs nothing: each task fails with that error
    # (kept alive, it spares the script's top-level code another run in a new worker per task).
    boot_failure = None if _boot_failure is None else _describe_failure(_boot_failure)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not message:
            return  # shutdown
        seq, limit = _HEADER.unpack_from(message)
        if boot_failure is not None:
            send(pickle.dumps((_FAILED, seq, boot_failure)))
            continue
        send(pickle.dumps((_STARTED, seq, None)))
        try:
            fn, args, kwargs = pickle.loads(message[_HEADER.size :])
        except BaseException as exc:
            lost = _unloadable(exc)
            send(pickle.dumps((_FAILED, seq, _describe_failure(lost))))
            continue
        label = getattr(fn, "__qualname__", "?")
        time_limit = None if math.isnan(limit) else limit
        here = _WorkerHandle(seq, cancel_word, label, time_limit, send)
        token = CURRENT.set(here)
        reply: tuple[int, int, bytes | None]
        try:
            value = fn(*args, **kwargs)
        except Cancelled as exc:
            if cancel_word.value == seq:  # answering a request: the task was revoked
                reply = (_CANCELLED, seq, None)
            else:
                reply = (_FAILED, seq, _describe_failure(exc))
        except BaseException as exc:
            reply = (_FAILED, seq, _describe_failure(exc))
            del exc
        else:
            try:
                reply = (_DONE, seq, pickle.dumps(value))
            except BaseException as exc:  # whatever a __reduce__ raises fails this task only
                unsendable = TypeError(
                    f"the result of {label}() could not be sent back from the worker process: {exc}"
                )
                reply = (_FAILED, seq, _describe_failure(unsendable))
            del value
        finally:
            CURRENT.reset(token)
        send(pickle.dumps(reply))
