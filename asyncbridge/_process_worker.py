"""The worker side of process work: the loop each worker process of a ``ProcessPool`` runs.

It receives a pickled task on its pipe, reports STARTED, runs the task with a ``_WorkerHandle`` as
the current work (so ``checkpoint()`` reads the shared cancel word and ``report_progress()`` sends a
message), and sends the value or the failure back (the exception pickled when it can be rebuilt, and
its traceback text always). Kept apart from the parent side (``_process.py``) because this is all a
worker process imports of the pool.
"""

from __future__ import annotations

import math
import pickle
import signal
import struct
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from ._context import CURRENT
from ._errors import Cancelled
from ._signals import unblock_signals

if TYPE_CHECKING:
    import multiprocessing.connection as mpc
    from collections.abc import Callable

# Messages from a worker: (kind, seq, body)
_STARTED, _DONE, _FAILED, _CANCELLED, _PROGRESS = 0, 1, 2, 3, 4
_HEADER = struct.Struct("<qd")  # task number, time limit in seconds (NaN: none)


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

    def _set_progress(self, meta: dict[str, Any]) -> bool:
        try:
            blob = pickle.dumps(meta)
        except Exception as exc:
            raise TypeError(f"report_progress() from a worker process needs picklable values: {exc}") from exc
        self._send(pickle.dumps((_PROGRESS, self._seq, blob)))
        return True

    def __repr__(self) -> str:
        return f"<process task {self._seq} {self._label}>"


def _describe_failure(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames cannot cross; their text does, as the cause
    blob: bytes | None
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # an exception that pickles but cannot be rebuilt is as bad
    except Exception:
        blob = None
    return pickle.dumps((blob, type(exc).__module__, type(exc).__qualname__, str(exc), text))


def worker_main(conn: mpc.Connection, cancel_word: Any) -> None:
    """The loop of one worker process: receive a task, run it, send its outcome."""
    unblock_signals()  # inherited from the manager thread that started us: terminate() must work
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    lock = threading.Lock()  # the work may report progress from threads of its own

    def send(data: bytes) -> None:
        with lock:
            conn.send_bytes(data)

    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not message:
            return  # shutdown
        seq, limit = _HEADER.unpack_from(message)
        send(pickle.dumps((_STARTED, seq, None)))
        try:
            fn, args, kwargs = pickle.loads(message[_HEADER.size :])
        except BaseException as exc:
            lost = RuntimeError(f"the worker could not unpickle the task: {exc!r}")
            send(pickle.dumps((_FAILED, seq, _describe_failure(lost))))
            continue
        label = getattr(fn, "__qualname__", "?")
        time_limit = None if math.isnan(limit) else limit
        here = _WorkerHandle(seq, cancel_word, label, time_limit, send)
        token = CURRENT.set(here)  # type: ignore[arg-type]
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
