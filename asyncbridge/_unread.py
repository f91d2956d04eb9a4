"""The record of a failure no one has read, logged when the handle holding it is collected."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

    from ._result import Result

LOGGER = logging.getLogger("asyncbridge")


class UnreadFailure:
    """Logs a failure that no one read, when the handle that holds it is collected: the job of
    asyncio's "Task exception was never retrieved", so that fire-and-forget work cannot fail in
    silence. Created only when such a handle fails; dropped the moment the failure is read."""

    __slots__ = ("exc", "ident", "label", "tb")

    exc: BaseException | None

    def __init__(self, exc: BaseException, tb: TracebackType | None, h: Result[Any]) -> None:
        # No reference to the handle: this object dies with it. Its id only if already made.
        self.exc, self.tb, self.label, self.ident = exc, tb, h._label, h._id

    def __del__(self) -> None:
        exc = self.exc
        if exc is None:
            return
        what = f"{self.label} ({self.ident[:8]}…)" if self.ident else self.label or "work"
        try:
            LOGGER.error(
                "%s failed and its exception was never retrieved (read it with get(), await, "
                "exception() or info, or pass the handle on to gather())",
                what,
                exc_info=(type(exc), exc, self.tb),
            )
        except Exception:  # interpreter shutdown: logging may be gone, nothing to do
            pass
