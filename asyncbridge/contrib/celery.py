"""Celery results through the asyncbridge handle, and Celery as an engine for ``@task``.

Install with ``pip install asyncbridge[celery]``; this module is imported only when a Celery
object is first wrapped, so ``import asyncbridge`` never imports Celery.

How a handle learns about its task. Every pending handle of one app registers with that app's
single *listener* (a daemon thread, ``asyncbridge-celery``), so awaiting 10,000 results uses one
thread, not 10,000:

- with a Redis result backend the listener subscribes to each task's result channel (the backend
  publishes every state it stores there: STARTED, PROGRESS, RETRY, the outcome), and once Redis has
  confirmed the subscription it reads the stored state back, so nothing stored before the
  subscription is missed; a task pending for long is read back now and then (:data:`RECHECK_AFTER`);
- with any other backend (the file system, a database, a cache) it polls the stored state of every
  pending task in one loop: every :data:`POLL_INTERVAL` seconds while the state changes, less often
  as it stays unchanged (up to :data:`POLL_MAX_INTERVAL`); on the file system a check is a ``stat()``.

Each state the backend stores is delivered once (a poll that finds the state it found before delivers
nothing). The details are in :mod:`asyncbridge.contrib._celery_listener`.

State maps one to one: PENDING (and RECEIVED), STARTED, RETRY (``info`` is the error), PROGRESS and
custom states (``state`` is their own name, ``info`` their meta), SUCCESS, FAILURE (the exception
rebuilt by Celery, with the worker's traceback text as its ``__cause__``), REVOKED (the usual
cancellation errors, with Celery's ``TaskRevokedError`` as their ``__cause__``).

``handle.cancel()`` revokes the task with ``terminate=True``: a prefork worker kills the child
running it (other pools cannot stop a running task, which Celery still marks REVOKED). A REVOKED is
final only after :data:`REVOKED_SETTLE` seconds: Celery's worker stores REVOKED as it handles the
revoke, but the task may still run and store its own outcome over it (a child that finished just
before the kill, or a task the worker had already handed to a child when it marked it revoked: it
then stores STARTED, and SUCCESS or nothing). An outcome the task stored in that time wins, so a
value it produced is never lost to the race; otherwise the handle ends REVOKED, even if Celery's
backend is left saying STARTED (a child killed just after it stored that).

In a process forked while handles are pending, a new listener thread picks them up (the tasks run
in the cluster, not in the parent); at interpreter exit the daemon listener simply stops.

Celery's own rule holds for ``get()`` inside a running task (``RuntimeError``, unless the task
allows it with ``celery.result.allow_join_result()``). Bad input fails at the call: a task id the
backend cannot key, an argument the app's serializer cannot encode (``TypeError`` naming it), a
function no worker could find by name (a lambda without ``name=``) given to ``@task(engine=app)``;
an id that a working poller cannot read fails only its handle.

``@task(engine=app)`` registers the function as a Celery task of ``app``, named as Celery names its
own (:func:`task_name`), and sends its calls through Celery's ``apply_async`` (:func:`send`).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import TYPE_CHECKING, Any

from celery import Celery, states
from celery.backends.base import DisabledBackend
from celery.backends.filesystem import FilesystemBackend
from celery.exceptions import (
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded as CeleryTimeLimitExceeded,
)
from celery.local import maybe_evaluate
from celery.result import AsyncResult, GroupResult, ResultSet, task_join_will_block
from kombu.exceptions import EncodeError
from kombu.serialization import dumps

from .. import _registry as registry
from .._errors import RemoteTraceback, TimeLimitExceeded
from .._result import Result, Wrapped
from ..extension import guard_blocking, running_as
from . import _celery_listener
from ._celery_listener import _LISTENERS as _LISTENERS  # for the tests

if TYPE_CHECKING:
    from collections.abc import Iterable

# The listener's knobs (asyncbridge/contrib/_celery_listener.py reads them here, when it uses them).
#: Seconds between two checks of a pending task whose state changed lately, for result backends that
#: cannot push (the file system, a database, a cache).
POLL_INTERVAL = 0.05
#: The longest wait between two checks of a pending task on such a backend: a task whose state stays
#: unchanged is checked less often, every eighth of the time since its last change, from
#: POLL_INTERVAL up to this, so that thousands of long waits cost little.
POLL_MAX_INTERVAL = 0.5
#: File-system backend: seconds between two full reads of a pending task's file even when its stat
#: says unchanged (a safety net for file systems whose time stamps or attribute caches hide a write).
POLL_REREAD_INTERVAL = 10.0
#: Redis: seconds a task may stay pending before the listener reads its stored state directly, in
#: case a message was lost (a safety net: the listener's own order of subscribing and reading back
#: loses none); the next such read comes twice as long after, and so on up to RECHECK_MAX.
RECHECK_AFTER = 2.0
RECHECK_MAX = 30.0
#: Seconds between two sweeps of handles that ended or were dropped.
SWEEP_INTERVAL = 1.0
#: Seconds between reconnection attempts when the result backend is unreachable.
RECONNECT_DELAY = 0.5
#: Seconds a REVOKED waits for the task's own outcome before it is final.
REVOKED_SETTLE = 0.25


class _CeleryGuard:
    """Celery's rule for blocking waits, applied by the handle's ``get()``: like Celery's own
    ``AsyncResult.get()``, even when the result is already there."""

    __slots__ = ()

    def check_can_block(self, h: Result[Any], caller: str) -> None:
        if task_join_will_block():
            raise RuntimeError(
                f"{h!r}.{caller}() was called inside a running Celery task, which can deadlock the "
                "worker pool (Celery's rule: 'Never call result.get() within a task!'). Chain the "
                "tasks instead, or wrap the call in celery.result.allow_join_result() if you are sure."
            )


_GUARD = _CeleryGuard()


def _rebuild_failure(meta: dict[str, Any]) -> BaseException:
    exc = meta.get("result")
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"the Celery task failed with {exc!r}")
    if isinstance(exc, CeleryTimeLimitExceeded | SoftTimeLimitExceeded):
        limit = TimeLimitExceeded(f"the Celery task exceeded its time limit: {exc}")
        limit.__cause__ = exc
        exc = limit
    text = meta.get("traceback")
    if text and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def apply_meta(h: Result[Any], meta: dict[str, Any]) -> None:
    """Move ``h`` to the state Celery stored for its task (never backwards): each producer call is
    a no-op where its move is not allowed, so nothing here reads the handle's state."""
    status = meta.get("status", states.PENDING)
    if status in (states.PENDING, states.RECEIVED):
        return
    h._set_started()  # a no-op if it runs already: Celery may report a start late, or never
    if status in states.READY_STATES:
        if status == states.SUCCESS:
            h._set_result(meta.get("result"))
        elif status == states.REVOKED:
            revoked = cf.CancelledError("the Celery task was revoked")
            revoked.__cause__ = TaskRevokedError(str(meta.get("result") or "revoked"))
            h._revoke_as(revoked)
        else:
            h._set_exception(_rebuild_failure(meta))
        return
    if status == states.STARTED:
        return
    if status == states.RETRY:
        h._set_retry(_rebuild_failure(meta))
        return
    info = meta.get("result")
    custom = None if status == "PROGRESS" else status  # update_state(state="RESIZING", ...)
    h._set_progress(info if isinstance(info, dict) else {"info": info}, custom)


def listener_for(app: Celery) -> _celery_listener._Listener:
    """The one listener of ``app`` (see :mod:`asyncbridge.contrib._celery_listener`), which reads the
    knobs above from this module when it uses them."""
    return _celery_listener.listener_for(app, sys.modules[__name__])


def _check_backend(app: Celery, what: str) -> None:
    if isinstance(app.backend, DisabledBackend):
        raise ValueError(
            f"{what} belongs to Celery app {app.main!r}, which has no result backend, so its outcome can "
            "never be known: configure result_backend (for instance 'redis://...' or 'file:///path')"
        )


def _check_task_id(task_id: str, app: Celery) -> None:
    if "\x00" in task_id:
        raise ValueError(f"a task id cannot hold a NUL character: {task_id!r}")
    if isinstance(app.backend, FilesystemBackend):
        key = app.backend.get_key_for_task(task_id)
        if "/" in task_id or len(key) > 255:
            raise ValueError(
                f"task id {task_id!r} cannot name a file of the file-system result backend of Celery app "
                f"{app.main!r} (no '/', at most 255 bytes with its prefix)"
            )


def bind(h: Result[Any], task_id: str, app: Celery, name: str | None = None) -> None:
    """Make ``h`` the handle of the Celery task ``task_id`` of ``app``."""
    _check_backend(app, f"task {task_id}")
    _check_task_id(task_id, app)
    h._setup(f"celery {name or 'task'}", task_id=task_id)
    guard_blocking(h, _GUARD, even_when_done=True)

    def revoke() -> None:
        app.control.revoke(task_id, terminate=True, signal="SIGTERM")

    def forget() -> None:
        app.backend.forget(task_id)  # as Celery's own AsyncResult(task_id).forget()

    h._on_cancel(revoke)
    h._bind_source(forget=forget)
    listener_for(app).watch(h, task_id)


def bind_task_id(h: Result[Any], task_id: str, app: Any) -> None:
    """``Result(task_id, app=app)``: a handle for a task this process may not have sent."""
    if not isinstance(task_id, str) or not task_id:
        raise TypeError(f"a task id must be a non-empty str, not {task_id!r}")
    if app is None:
        from celery import current_app

        app = current_app
    if not isinstance(app, Celery):
        raise TypeError(f"app must be a celery.Celery application, not {type(app).__qualname__}")
    app = getattr(app, "_get_current_object", lambda: app)()  # celery.current_app is a proxy
    bind(h, task_id, app)


def wrap_celery(obj: Any) -> Result[Any]:
    """A handle for a Celery ``AsyncResult``, ``GroupResult`` (a gather of its members, in order) or
    the last result of a chain (which fails as soon as an earlier task of the chain fails)."""
    from .._compose import gather

    if isinstance(obj, GroupResult | ResultSet):
        members = [wrap_celery(r) for r in obj.results]
        h = gather(*members)
        if isinstance(obj, GroupResult) and obj.id:
            h._setup(task_id=obj.id)
        return h
    if not isinstance(obj, AsyncResult):
        raise TypeError(f"wrap() cannot wrap a Celery {type(obj).__qualname__}")
    _check_backend(obj.app, f"task {obj.id}")
    last: Result[Any] = Wrapped()
    bind(last, obj.id, obj.app)  # not obj.name: a property that reads the backend
    parents = list(_parents(obj))
    if not parents:
        return last
    return _follow_chain(last, [wrap_celery(p) for p in parents])


def _parents(result: AsyncResult) -> Iterable[AsyncResult]:
    parent = result.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def _follow_chain(last: Result[Any], parents: list[Result[Any]]) -> Result[Any]:
    """``last``'s outcome, unless an earlier task of the chain fails first (then the chain never
    reaches ``last``): that failure, as Celery's ``get(follow_parents=True)`` reports it."""

    def parent_done(p: Result[Any]) -> None:
        if not p.successful():
            last._adopt(p)

    for p in parents:
        p.add_done_callback(parent_done)
    return last


# -- Celery as an engine for @task ---------------------------------------------------------------


class _InCeleryTask:
    """What ``report_progress()``, ``checkpoint()`` and ``cancel_requested()`` see in a Celery task."""

    __slots__ = ("_label", "_task")

    _cancel_requested = False  # revoke(terminate=True) kills the child: nothing to check for
    _deadline = None  # Celery's soft_time_limit raises inside the task by itself
    _time_limit = None

    def __init__(self, task: Any) -> None:
        self._task = task
        self._label = f"celery {task.name}"

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None, /) -> bool:
        self._task.update_state(state=state_name or "PROGRESS", meta=meta)
        return True

    def __repr__(self) -> str:
        return f"<{self._label} {self._task.request.id}>"


def current_celery_work() -> _InCeleryTask | None:
    """The running Celery task, as work that can report progress; None outside any task."""
    from celery import current_task

    task = current_task._get_current_object() if current_task else None
    if task is None or task.request.id is None:
        return None
    return _InCeleryTask(task)


def task_name(fn: Any, app: Celery, name: str | None) -> str:
    """The name ``fn`` is registered under in ``app``: ``name`` if given, else Celery's own rule for
    ``app.task`` (``app.gen_task_name(fn.__name__, fn.__module__)``: ``module.__name__``, the app's
    main name standing for ``__main__``).

    A worker runs a task it finds by that name in its own app, so what counts is that the worker
    registers the same name, by importing the module that registers it: a function an app factory
    defines inside a function qualifies as well as a module-level one. What has no name to be found
    by (a lambda, a callable object without ``__name__``) needs ``name``.

    Raises:
        TypeError: no ``name``, and ``fn`` has none of its own.
    """
    if name is not None:
        return name
    own = getattr(fn, "__name__", None)
    if not isinstance(own, str) or not own.isidentifier():  # "<lambda>", or none at all
        what = own if isinstance(own, str) else f"a {type(fn).__qualname__} object"
        raise TypeError(
            f"a Celery worker finds a task by its name, and {what} has none it could be found by: give it "
            "a name: @task(engine=app, name='proj.double'), registered by the worker too (it imports the "
            "module that registers it)"
        )
    return str(app.gen_task_name(own, getattr(fn, "__module__", None)))


def register(spec: Any, app: Celery) -> Any:
    """Register ``spec.fn`` as a Celery task of ``app`` under ``spec.name`` (see :func:`task_name`),
    with the task's options mapped to Celery's: ``timeout`` to ``soft_time_limit`` (and a hard
    ``time_limit`` one second later), ``Retry`` to ``autoretry_for``/``max_retries``/``retry_backoff``.
    Returns what ``app.task`` returns (a proxy that registers the task on first use)."""
    fn = spec.fn
    # shared=False: the task is this app's. Celery's default (shared) would also register it in every
    # app finalized later, where two apps' registrations of one name then collide (a second app made
    # by the same factory, in a test or a worker): calls would reach whichever came first.
    options: dict[str, Any] = {"name": spec.name, "bind": True, "shared": False}
    if spec.timeout is not None:
        options["soft_time_limit"] = spec.timeout
        options["time_limit"] = spec.timeout + 1.0
    if spec.retry is not None:
        on = spec.retry.on if isinstance(spec.retry.on, tuple) else (spec.retry.on,)
        options.update(
            autoretry_for=on,
            max_retries=spec.retry.attempts - 1,
            retry_backoff=spec.retry.backoff or False,
            retry_backoff_max=10**9,
            retry_jitter=False,
            default_retry_delay=0,
        )

    def run(task: Any, *args: Any, **kwargs: Any) -> Any:
        with running_as(_InCeleryTask(task)):
            return fn(*args, **kwargs)

    # Celery compiles a stand-in ``def <__name__>(...)`` to check call arguments: a lambda's or an
    # object's lacking name must give way to an identifier (the end of the task's name, if one).
    own = getattr(fn, "__name__", None)
    last = spec.name.rsplit(".", 1)[-1]
    run.__name__ = next((n for n in (own, last) if isinstance(n, str) and n.isidentifier()), "run")
    run.__qualname__ = getattr(fn, "__qualname__", "run")
    run.__module__ = getattr(fn, "__module__", None) or "__main__"
    run.__doc__ = fn.__doc__
    return app.task(**options)(run)


def registered(celery_task: Any) -> Any:
    """The Celery task itself, for the proxy :func:`register` returned (registering it if it was
    not yet): what ``app.tasks[name]`` holds."""
    return maybe_evaluate(celery_task)


def send(
    celery_task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any] | None = None
) -> Result[Any]:
    """Send one call of a registered task, with Celery's ``apply_async`` ``options``; its handle.
    Bad input raises before anything is sent: an app without a result backend and a task id its
    backend cannot key (``ValueError``), an argument the app's serializer cannot encode
    (``TypeError`` naming it)."""
    options = options or {}
    app = celery_task.app
    _check_backend(app, f"task {celery_task.name}")
    task_id = options.get("task_id")
    if task_id is not None:
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"a task id must be a non-empty str, not {task_id!r}")
        _check_task_id(task_id, app)
    try:
        sent = celery_task.apply_async(args, kwargs, **options)
    except EncodeError as exc:
        raise TypeError(_unencodable(celery_task, args, kwargs, exc)) from exc
    return wrap_celery(sent)


def _unencodable(celery_task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> str:
    serializer = celery_task.serializer or celery_task.app.conf.task_serializer
    named = [(f"argument {i}", v) for i, v in enumerate(args)] + [
        (f"argument {k!r}", v) for k, v in kwargs.items()
    ]
    for name, value in named:
        try:
            dumps(value, serializer=serializer)  # type: ignore[no-untyped-call]
        except Exception as err:
            return (
                f"{name} of Celery task {celery_task.name} ({type(value).__qualname__}) cannot be sent with "
                f"the app's {serializer!r} serializer: {err}"
            )
    return f"the arguments of Celery task {celery_task.name} cannot be sent with {serializer!r}: {exc}"


def is_celery_app(obj: object) -> bool:
    return isinstance(obj, Celery)


# -- registration: how the core finds this adapter (docs/architecture.md, "Adapters") -------------


class _CeleryTask:
    """``@task(engine=app)``: the function registered as a Celery task of ``app``."""

    engine_name = "celery"

    def __init__(self, task: Any, app: Celery, name: str | None) -> None:
        self.name = task.name = task_name(task.fn, app, name)
        self._celery = register(task, app)

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Result[Any]:
        return send(self._celery, args, kwargs, options)

    def signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, immutable: bool) -> Any:
        native = self.native()
        return native.si(*args, **kwargs) if immutable else native.s(*args, **kwargs)

    def native(self) -> Any:
        return registered(self._celery)


def _accepts(obj: object) -> bool:
    return type(obj).__module__.startswith("celery.")  # one it cannot wrap: wrap_celery names it


def _by_id(h: Result[Any], task_id: str, app: object) -> bool:
    if app is not None and not is_celery_app(app):
        return False
    bind_task_id(h, task_id, app)
    return True


registry.register(
    registry.Adapter(
        name="celery",
        accepts=_accepts,
        wrap=wrap_celery,
        is_engine=is_celery_app,
        bind_task=_CeleryTask,
        by_id=_by_id,
        current_work=current_celery_work,
    )
)
