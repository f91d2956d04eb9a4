"""Recording a handle in a store: its id at once, each move as it happens, its outcome first.

``ResultStore.track`` gives a handle a :class:`_Recorder`. The recorder writes the state the handle
is in before ``track`` returns, each STARTED, PROGRESS and RETRY in the thread that makes the move
(through the handle's state observers), and the outcome *before* the handle moves to it: the
handle's class becomes one whose ``_finish`` hands the outcome to the recorder first, so a process
that exits as soon as its work ended has stored it, and an outcome the store cannot take (too large,
unpicklable) fails the work itself. A done-callback catches an end that did not pass through there
(a queued handle revoked at once, or one tracked while its end was under way).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import StoreError
from ._remote import describe_failure
from ._result import Owned, Result, Wrapped
from ._state import _TERMINAL, FAILURE, PROGRESS, RETRY, REVOKED, SUCCESS, State
from ._store_follow import owner_id

if TYPE_CHECKING:
    from types import TracebackType

    from ._store import ResultStore

T = TypeVar("T")

LOGGER = logging.getLogger("asyncbridge")


class _Recorder:
    """Writes the states of one tracked handle."""

    __slots__ = ("expires", "final", "h_label", "lock", "seq", "store")

    def __init__(self, store: ResultStore, h: Result[Any], expires: float | None) -> None:
        self.store = store
        self.expires = expires
        self.h_label = h._label
        self.lock = threading.Lock()
        self.seq = 0
        self.final = False

    def _record(self, h: Result[Any], st: State, info: Any, state_name: str | None = None) -> dict[str, Any]:
        self.seq += 1
        return {
            "seq": self.seq,
            "state": str(st),
            "state_name": state_name,
            "info": info,
            "label": self.h_label,
            "attempts": h._attempts,
            "owner": owner_id(),
            "at": time.time(),
        }

    def _put(self, h: Result[Any], record: dict[str, Any], final: bool, *, bounded: bool = True) -> None:
        expires_at = None if not final or self.expires is None else record["at"] + self.expires
        sealed = self.store._seal(record, bounded=bounded)
        self.store._backend.put(h.id, sealed, final=final, owner=owner_id(), expires_at=expires_at)

    def write_now(self, h: Result[Any]) -> None:
        """The state ``h`` is in now (before track() returns)."""
        st, info, state_name = h._now()
        if st in _TERMINAL:
            self.on_done(h)
            return
        if st is RETRY:
            info = describe_failure(info)
        with self.lock:
            self._put(h, self._record(h, st, info, state_name), final=False)

    def on_move(self, h: Result[Any], st: State, info: Any) -> None:
        if st is RETRY:
            info = describe_failure(info)
        with self.lock:
            if not self.final:
                try:
                    self._put(
                        h, self._record(h, st, info, h._now()[2] if st is PROGRESS else None), final=False
                    )
                except StoreError as exc:  # a progress report too large for the store: say so
                    LOGGER.error("%r: a %s report was not stored: %s", h, st, exc)

    def before_end(
        self, h: Result[Any], to: State, value: Any, tb: TracebackType | None
    ) -> tuple[State, Any, Any]:
        """Write the outcome before the move; one that cannot be stored fails the work instead."""
        with self.lock:
            if self.final:
                return to, value, tb
            try:
                self._put(h, self._final(h, to, value), final=True)
            except Exception as exc:  # too large, unpicklable, or the store failed
                if to is not SUCCESS:
                    LOGGER.error("%r: its outcome was not stored: %s", h, exc)
                    return to, value, tb
                error = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(f"the result of {self.h_label} could not be stored: {exc!r}")
                )
                try:
                    self._put(h, self._final(h, FAILURE, error), final=True, bounded=False)
                except Exception:
                    LOGGER.exception("%r: its failure to store its result was not stored either", h)
                self.final = True
                return FAILURE, error, None
            self.final = True
            return to, value, tb

    def on_done(self, h: Result[Any]) -> None:
        """The outcome of a handle that ended without passing through :meth:`before_end` (revoked
        while queued, or tracked while its end was under way)."""
        with self.lock:
            if self.final:
                return
            st, value, _ = h._ended()
            try:
                self._put(h, self._final(h, st, value), final=True)
            except Exception as exc:
                error = StoreError(f"the result of {self.h_label} could not be stored: {exc!r}")
                try:
                    self._put(h, self._final(h, FAILURE, error), final=True, bounded=False)
                except Exception:
                    LOGGER.exception("%r: its outcome was not stored", h)
            self.final = True

    def _final(self, h: Result[Any], st: State, value: Any) -> dict[str, Any]:
        if st is SUCCESS:
            return self._record(h, st, value)
        if st is FAILURE:
            return self._record(h, st, describe_failure(value))
        return self._record(h, REVOKED, None)


def _finish_recorded(
    h: Result[Any], to: State, value: Any, tb: TracebackType | None
) -> tuple[State, Any, Any]:
    recorder: _Recorder | None = h.__dict__.get("_recorder")
    if recorder is not None and not h.done():
        return recorder.before_end(h, to, value, tb)
    return to, value, tb


class _RecordedOwned(Owned[T]):
    """An owned handle whose outcome is stored before it moves to it (see ResultStore.track)."""

    __slots__ = ()

    def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool:
        return super()._finish(*_finish_recorded(self, to, value, tb))


class _RecordedWrapped(Wrapped[T]):
    __slots__ = ()

    def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool:
        return super()._finish(*_finish_recorded(self, to, value, tb))
