"""The exceptions asyncbridge raises, beside the standard ones it reuses.

The tree::

    BaseException
     └── asyncio.CancelledError
          └── Cancelled            raised by checkpoint() inside work whose handle was cancelled

Everything else is a standard exception, chosen so that existing ``except`` clauses keep working:

- ``TimeoutError`` (the builtin; since 3.11 also ``asyncio.TimeoutError`` and
  ``concurrent.futures.TimeoutError``): ``get(timeout=...)`` ran out.
- ``concurrent.futures.CancelledError`` (an ``Exception``): ``get()``/``result()`` on a REVOKED handle,
  and ``await`` on a REVOKED handle under trio.
- ``asyncio.CancelledError``: ``await`` on a REVOKED handle under asyncio.
- ``concurrent.futures.InvalidStateError``: ``set_result``/``set_exception`` on a finished handle.
- ``RuntimeError``: a ``get()`` that could never return (on the event-loop thread that must run the
  work), or work submitted after shutdown.
"""

from __future__ import annotations

import asyncio


class Cancelled(asyncio.CancelledError):
    """Raised by :func:`asyncbridge.checkpoint` inside work whose handle was cancelled.

    It derives from ``asyncio.CancelledError``, a ``BaseException``, so that a broad
    ``except Exception:`` in the work does not swallow it. Let it propagate: the handle then ends
    REVOKED. Work that catches it and returns a value ends SUCCESS instead, and the handle says so.
    """
