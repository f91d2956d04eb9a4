"""A new kind of work, defined entirely here and bound through the public extension API: it gets
await, get(), callbacks, cancellation both ways, composition with other kinds and ``@task(engine=)``
without a line of the package changed (docs/architecture.md, "Adapters").

The toy is a ``Chore``: a future-like object of its own, run by a thread of its own, with its own
way to cancel (a flag its function polls) and its own listeners.
"""

# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import asyncbridge as ab
from asyncbridge import extension as ext


class ChoreCancelled(Exception):
    pass


class Chore:
    """Runs ``fn(stop, *args)`` in a new thread; ``stop`` is an Event that ``cancel()`` sets."""

    def __init__(self, fn: Callable[..., Any], *args: Any, hold: threading.Event | None = None) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, Any], object]] = []
        self.outcome: tuple[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, hold), name="asyncbridge-chore")
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], hold: threading.Event | None) -> None:
        if hold is not None:
            hold.wait(30)  # queued until let go
        self._tell("started", None)
        try:
            outcome: tuple[str, Any] = ("done", fn(self.stop, *args))
        except ChoreCancelled:
            outcome = ("cancelled", None)
        except Exception as exc:
            outcome = ("error", exc)
        with self._lock:
            self.outcome = outcome
        self._tell(*outcome)

    def listen(self, fn: Callable[[str, Any], object]) -> None:
        """``fn(event, payload)`` for "started", "progress", then one of "done", "error", "cancelled"."""
        with self._lock:
            self._listeners.append(fn)
            outcome = self.outcome
        if outcome is not None:
            fn(*outcome)

    def _tell(self, event: str, payload: Any) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            fn(event, payload)

    def report(self, step: int) -> None:
        self._tell("progress", {"step": step})

    def cancel(self) -> None:
        self.stop.set()

    def join(self) -> None:
        self._thread.join(30)


# -- the adapter: all of it -----------------------------------------------------------------------


def wrap_chore(obj: Chore) -> ab.Result[Any]:
    h = ext.new_handle("chore", caller_holds_source=True)
    ext.on_cancel(h, obj.cancel)

    def on_event(event: str, payload: Any) -> None:
        if event == "started":
            ext.start(h)
        elif event == "progress":
            ext.progress(h, payload)
        elif event == "done":
            ext.succeed(h, payload)
        elif event == "error":
            ext.fail(h, payload)
        else:
            ext.confirm_cancelled(h, "the chore was cancelled")

    obj.listen(on_event)
    return h


class ChoreBoard:
    """The toy's engine: ``@ab.task(engine=ChoreBoard())`` runs each call as a Chore."""

    def __init__(self) -> None:
        self.sent: list[Chore] = []


class BoardTask:
    engine_name = "chores"

    def __init__(self, task: Any, board: ChoreBoard, name: str | None) -> None:
        self.name = name or f"chores.{task.__qualname__}"
        self._fn = task.fn
        self._board = board

    def submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> ab.Result[Any]:
        if options:
            raise TypeError(f"a chore takes no options: {sorted(options)}")
        chore = Chore(lambda stop, *a: self._fn(*a, **kwargs), *args)
        self._board.sent.append(chore)
        return wrap_chore(chore)

    def signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, immutable: bool) -> Any:
        raise TypeError("chores have no canvas")

    def native(self) -> Any:
        return self._board


@pytest.fixture(autouse=True, scope="module")
def chores_registered() -> Iterator[None]:
    ext.register(
        ext.Adapter(
            name="chores",
            accepts=lambda obj: isinstance(obj, Chore),
            wrap=wrap_chore,
            is_engine=lambda obj: isinstance(obj, ChoreBoard),
            bind_task=BoardTask,
        )
    )
    yield
    ext.unregister("chores")


# -- the contract, through the handle -------------------------------------------------------------


def add(stop: threading.Event, x: int, y: int) -> int:
    return x + y


def until_stopped(stop: threading.Event) -> str:
    if not stop.wait(30):
        return "never stopped"
    raise ChoreCancelled


def broken(stop: threading.Event) -> None:
    raise KeyError("broken chore")


def test_get_and_the_states_of_a_chore() -> None:
    hold = threading.Event()
    h = ab.wrap(Chore(add, 2, 3, hold=hold))
    assert h.state is ab.State.PENDING
    hold.set()
    assert h.get(30) == 5
    assert h.state is ab.State.SUCCESS and h.info == 5


@pytest.mark.anyio
async def test_await_a_chore_on_both_backends() -> None:
    assert await ab.wrap(Chore(add, 20, 22)) == 42


def test_a_failure_keeps_its_type_for_every_reader() -> None:
    h = ab.wrap(Chore(broken))
    with pytest.raises(KeyError, match="broken chore"):
        h.get(30)
    assert isinstance(h.exception(0), KeyError) and h.failed()


def test_callbacks_and_progress_of_a_chore() -> None:
    reports: list[dict[str, Any]] = []
    called = threading.Event()

    def reporting(stop: threading.Event) -> str:
        chore.report(1)
        chore.report(2)
        return "reported"

    hold = threading.Event()
    chore = Chore(reporting, hold=hold)
    h = ab.wrap(chore)
    h.on_progress(reports.append)
    h.add_done_callback(lambda _h: called.set())
    hold.set()
    assert h.get(30) == "reported" and called.wait(30)
    assert reports == [{"step": 1}, {"step": 2}]


def test_cancelling_the_handle_stops_the_chore() -> None:
    chore = Chore(until_stopped)
    h = ab.wrap(chore)
    h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(30)
    assert h.state is ab.State.REVOKED
    chore.join()
    assert chore.outcome == ("cancelled", None)


def test_a_chore_cancelled_elsewhere_revokes_the_handle_for_every_waiter() -> None:
    chore = Chore(until_stopped)
    h = ab.wrap(chore)
    seen: list[str] = []

    def wait() -> None:
        seen.append(repr(h.get(30, propagate=False)))

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for t in waiters:
        t.start()
    chore.cancel()  # not through the handle
    for t in waiters:
        t.join(30)
    assert h.state is ab.State.REVOKED and len(seen) == 3
    assert anyio.run(_state_after_await, h) == ab.State.REVOKED


async def _state_after_await(h: ab.Result[Any]) -> ab.State:
    try:
        await h
    except BaseException:
        pass
    return h.state


def test_only_the_adapter_completes_a_chore_handle() -> None:
    chore = Chore(until_stopped)
    h = ab.wrap(chore)
    with pytest.raises(RuntimeError, match="belongs to its work"):
        h.set_result("not the chore's")
    chore.cancel()
    h.wait(30)


def test_gather_chores_with_other_kinds_of_work() -> None:
    async def coro() -> str:
        return "coroutine"

    chore: Any = Chore(add, 1, 2)  # a kind of work the type checker does not know, as gather() does
    h = ab.gather(chore, ab.run_in_thread(lambda: "thread"), ab.spawn(coro()))
    assert list(h.get(30)) == [3, "thread", "coroutine"]


def test_a_task_on_the_chore_engine() -> None:
    board = ChoreBoard()

    @ab.task(engine=board)
    def multiply(x: int, y: int) -> int:
        return x * y

    assert multiply.name.startswith("chores.")
    h = multiply.delay(6, 7)
    assert h.get(30) == 42
    assert len(board.sent) == 1
    assert "chores" in repr(multiply)
    with pytest.raises(TypeError, match="takes no options"):
        multiply.apply_async((1, 2), countdown=3)
