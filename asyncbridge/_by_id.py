"""A handle found by its id: ``Result(task_id)``, ``Result(task_id, store=...)``,
``Result(task_id, app=...)``, and ``forget()``.

A mixin of :class:`asyncbridge.Result`. ``Result(task_id)`` follows the live handle that this
process knows by that id (``_ids.py``); ``store=`` binds to a stored result (``_store.py``, which
installs that binding when the package is imported: the handle imports no store); ``app=`` asks the
engine's adapter (``_registry.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from . import _ids as ids
from ._errors import UnknownResult
from ._state import PENDING, PROGRESS, RETRY, STARTED, State

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._result import Result

#: ``Result(task_id, store=...)``'s binding to a stored result, installed by ``_store`` when the
#: package is imported: ``(handle, task_id, store or None) -> False`` if no store is at hand, else
#: True once bound (or :class:`UnknownResult` from the store).
_BIND_STORED: list[Callable[[Result[Any], str, Any], bool]] = []


def install_bind_stored(impl: Callable[[Result[Any], str, Any], bool]) -> None:
    _BIND_STORED[:] = [impl]


class ById:
    """The by-id side of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _id: str | None
        _label: str
        _loop: Any
        _hooks: Callable[[], object] | list[Callable[[], object]] | None
        _pversion: int
        _st: State
        _meta: Any
        _state_name: str | None

        @property
        def id(self) -> str: ...
        def _setup(
            self, label: str | None = None, *, task_id: str | None = None, time_limit: float | None = None
        ) -> None: ...
        def _set_started(self) -> bool: ...
        def _set_progress(self, meta: dict[str, Any], state_name: str | None = None) -> bool: ...
        def _set_retry(self, exc: BaseException) -> bool: ...
        def _adopt(self, src: Any) -> bool: ...
    else:
        __slots__ = ()

    def _bind_task_id(self, task_id: str | None, app: Any, store: Any) -> None:
        if task_id is None:
            raise TypeError("Result(app=...) needs the task id too: Result(task_id, app=app)")
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"a task id must be a non-empty str, not {task_id!r}")
        me = cast("Result[Any]", self)  # a mixin of Result: self is one
        if store is not None:  # the store's record is the truth (forgotten, expired, or there)
            _BIND_STORED[0](me, task_id, store)
        elif app is None:
            try:
                self._follow(ids.find(task_id))
            except UnknownResult:
                if not (_BIND_STORED and _BIND_STORED[0](me, task_id, None)):
                    raise
        else:
            from . import _registry as registry  # the registry imports _result (for types only)

            self._setup(task_id=task_id)  # the engine's id is the handle's
            if not registry.bind_by_id(me, task_id, app):
                raise TypeError(
                    f"Result(task_id, app=...) needs the engine of a registered adapter (a Celery app, "
                    f"with asyncbridge[celery]), not {type(app).__qualname__}"
                )

    def _follow(self, src: Result[Any]) -> None:
        """Agree with the live handle ``src``: its moves from now on, then where it stands now (a
        move seen both ways is applied once: each is a no-op the second time, and a progress report
        is caught up only if none came meanwhile)."""
        self._id = src.id
        self._label = src._label
        forget = src.__dict__.get("_engine_forget")
        if forget is not None:
            self.__dict__["_engine_forget"] = forget
        self._loop = src._loop  # the same rule on where a thread may block for it
        self._hooks = src.cancel
        src._watch(self._mirror)
        st, meta = src._st, src._meta
        if st is not PENDING:
            self._set_started()
            if st is PROGRESS and self._pversion == 0:
                self._set_progress(meta, src._state_name)
            elif st is RETRY:
                self._set_retry(meta)
        src.add_done_callback(self._adopt)

    def _mirror(self, _src: Result[Any], st: State, info: Any) -> None:
        if st is STARTED:
            self._set_started()
        elif st is PROGRESS:
            self._set_progress(info, _src._state_name)
        elif st is RETRY:
            self._set_retry(info)

    def forget(self) -> None:
        """Forget this result by its id: from now on ``Result(id)`` raises
        :class:`asyncbridge.UnknownResult` saying so, and an engine deletes its own record of it
        (Celery's result backend entry). This handle keeps what it already knows, and its work goes
        on if it has not ended (``cancel()`` stops it)."""
        ids.forget(self.id, self.__dict__.get("_engine_forget"))
