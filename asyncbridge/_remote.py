"""An exception as it crosses to another process (a worker's reply, a stored result) and back.

The exception itself is pickled when it can be (and rebuilt, to be sure it can be); its traceback
text always travels, and comes back as its ``__cause__`` (:class:`RemoteTraceback`), so the frames
of the process that raised it show in ``handle.traceback``. An exception that cannot make the
journey comes back as a ``RuntimeError`` naming its type and message.

Exceptions are pickled with each class's own ``__reduce__``, never with reducers registered for
exception classes in ``copyreg`` (tblib's ``pickling_support.install()``, which importing
``distributed`` runs, registers one for every exception class that rebuilds ``SystemExit(3)`` with
``code`` None): what crosses is what the exception itself says it is.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import traceback
from typing import Any

from ._errors import RemoteTraceback

__all__ = ["describe_failure", "rebuild_failure"]


def describe_failure(exc: BaseException) -> bytes:
    """``exc``, with its traceback text, as bytes that any process can read back."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    blob: bytes | None
    try:
        blob = _dumps(exc)  # the traceback is not pickled: its text goes beside it
        pickle.loads(blob)  # an exception that pickles but cannot be rebuilt is as bad
    except Exception:
        blob = None
    return pickle.dumps((blob, type(exc).__module__, type(exc).__qualname__, str(exc), text))


def _dumps(obj: object) -> bytes:
    """``pickle.dumps`` without ``copyreg``'s reducers of exception classes (see the docstring)."""
    table = copyreg.dispatch_table
    key = len(table)
    own = _TABLES.get(key)
    if own is None:
        own = {k: v for k, v in table.items() if not (isinstance(k, type) and issubclass(k, BaseException))}
        _TABLES.clear()
        _TABLES[key] = own
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = own
    pickler.dump(obj)
    return buffer.getvalue()


_TABLES: dict[int, dict[Any, Any]] = {}  # copyreg's table less exception reducers, by its size


def rebuild_failure(body: bytes) -> BaseException:
    """The exception :func:`describe_failure` described, with its traceback text as its cause."""
    blob, module, qualname, message, text = pickle.loads(body)
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException:  # rebuilding it here failed: fall back to its text
            exc = None
    if exc is None:
        exc = RuntimeError(f"{module}.{qualname}: {message} (the exception could not be sent back as is)")
    exc.__cause__ = RemoteTraceback(text)
    return exc
