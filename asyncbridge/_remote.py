"""An exception as it crosses to another process (a worker's reply, a stored result) and back.

The exception itself is pickled when it can be (and rebuilt, to be sure it can be); its traceback
text always travels, and comes back as its ``__cause__`` (:class:`RemoteTraceback`), so the frames
of the process that raised it show in ``handle.traceback``. An exception that cannot make the
journey comes back as a ``RuntimeError`` naming its type and message.
"""

from __future__ import annotations

import pickle
import traceback

from ._errors import RemoteTraceback

__all__ = ["describe_failure", "rebuild_failure"]


def describe_failure(exc: BaseException) -> bytes:
    """``exc``, with its traceback text, as bytes that any process can read back."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    blob: bytes | None
    try:
        blob = pickle.dumps(exc)  # the traceback is not pickled: its text goes beside it
        pickle.loads(blob)  # an exception that pickles but cannot be rebuilt is as bad
    except Exception:
        blob = None
    return pickle.dumps((blob, type(exc).__module__, type(exc).__qualname__, str(exc), text))


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
