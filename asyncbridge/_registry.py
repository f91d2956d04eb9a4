"""The registry of adapters: how the core finds the kinds of work it does not know.

``wrap()``, ``@task(engine=...)``, ``Result(task_id, app=...)`` and the current-work lookup of
``report_progress()``/``checkpoint()`` ask the registry, never an adapter module by name. An adapter
is an :class:`Adapter` that its own module registers at import (``register(Adapter(...))``).

Adapters are found without importing anything up front, through the entry-point group
``asyncbridge.adapters``: each entry is named after the top-level package whose objects its adapter
handles and points at the module that registers it (``celery = "asyncbridge.contrib.celery"``). The
registry imports that module the first time it meets an object of that package, or, for the
current-work lookup, once that package has been imported by someone. docs/architecture.md
("Adapters") describes the protocol.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._result import Result

__all__ = ["Adapter", "RemoteTask", "register", "unregister"]

GROUP = "asyncbridge.adapters"


class RemoteTask(Protocol):
    """A task bound to an adapter's engine (``@task(engine=app)``): what ``delay()``,
    ``apply_async()``, ``s()``/``si()`` and ``celery_task`` of the task delegate to."""

    #: The name the engine knows the task by (a worker finds it by this name).
    name: str
    #: The adapter's name ("celery"), for messages and for engine-specific accessors.
    engine_name: str

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Result[Any]:
        """Send one call; return its handle at once. ``options`` are the engine's own (countdown...);
        an option it does not know raises ``TypeError`` naming it."""
        ...

    def signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, immutable: bool) -> Any:
        """The engine's description of one call, for its own composition (Celery's canvas); an
        engine without one raises ``TypeError``."""
        ...

    def native(self) -> Any:
        """The engine's own task object."""
        ...


@dataclass(frozen=True, slots=True)
class Adapter:
    """What a kind of work offers the core. Every field but ``name`` is optional.

    - ``accepts(obj)``: whether ``obj`` is this adapter's kind of work; then ``wrap(obj)`` makes
      its handle (or raises, naming what is wrong with it). ``accepts`` has no side effects: the
      compositions ask it to check their members before starting any.
    - ``is_engine(obj)``: whether ``@task(engine=obj)`` means this adapter's engine; then
      ``bind_task(task, obj, name)`` runs once, when the task is defined, and returns the
      :class:`RemoteTask` that runs its calls (``name``: the ``name=`` given, or None).
    - ``by_id(handle, task_id, obj)``: bind the blank ``handle`` to the work ``task_id`` of the
      engine ``obj`` (``Result(task_id, app=app)``, as Celery's ``AsyncResult``) and return True;
      False if ``obj`` is not this adapter's engine. ``obj`` None: the adapter's default engine
      (Celery's current app), if it has one.
    - ``current_work()``: inside work this adapter runs that the core did not start (a plain Celery
      task), the object that takes its progress reports (with ``_set_progress(meta)``), or None.
    """

    name: str
    accepts: Callable[[Any], bool] | None = None
    wrap: Callable[[Any], Result[Any]] | None = None
    is_engine: Callable[[Any], bool] | None = None
    bind_task: Callable[[Any, Any, str | None], RemoteTask] | None = None
    by_id: Callable[[Result[Any], str, Any], bool] | None = None
    current_work: Callable[[], Any] | None = None


_LOCK = threading.Lock()
_ADAPTERS: dict[str, Adapter] = {}
_ENTRY_POINTS: dict[str, str] | None = None  # package name -> module that registers its adapter
_TRIED: set[str] = set()  # packages whose adapter module was imported (or failed to be)


def register(adapter: Adapter) -> None:
    """Add ``adapter`` (replacing one of the same name): from now on the core asks it too."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"register() needs an asyncbridge Adapter, not {type(adapter).__qualname__}")
    with _LOCK:
        _ADAPTERS[adapter.name] = adapter


def unregister(name: str) -> None:
    """Remove the adapter named ``name``, if any: handles it made keep working."""
    with _LOCK:
        _ADAPTERS.pop(name, None)


def adapters() -> list[Adapter]:
    return list(_ADAPTERS.values())


def _entry_points() -> dict[str, str]:
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        from importlib.metadata import entry_points

        _ENTRY_POINTS = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return _ENTRY_POINTS


def load_for(obj: object) -> bool:
    """Import the adapter module for the package that ``obj``'s type comes from, once; True if a
    module was imported now (the caller asks the adapters again)."""
    package = type(obj).__module__.partition(".")[0]
    if package in _TRIED or package in ("builtins", "asyncio", "concurrent"):
        return False
    _TRIED.add(package)
    module = _entry_points().get(package)
    if module is None:
        return False
    importlib.import_module(module)  # an ImportError names the missing extra: let it through
    return True


def load_for_imported_packages() -> None:
    """Import the adapter of every package that has an entry and is imported already (a Celery
    worker process imports celery, never asyncbridge's adapter)."""
    _load_where(lambda package: package in sys.modules)


def _load_where(wanted: Callable[[str], bool]) -> None:
    """Import, once, the adapter module of every entry whose package is ``wanted``."""
    for package, module in _entry_points().items():
        if package not in _TRIED and wanted(package):
            _TRIED.add(package)
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # that library without its extra's other parts: nothing to report to


def current_work() -> Any:
    """What takes progress reports in work an adapter's engine runs outside asyncbridge, or None."""
    load_for_imported_packages()
    for adapter in adapters():
        if adapter.current_work is not None:
            found = adapter.current_work()
            if found is not None:
                return found
    return None


def _wrapper_of(obj: object) -> Adapter | None:
    found: Adapter | None = find(
        lambda a: a if a.accepts is not None and a.wrap is not None and a.accepts(obj) else None, obj
    )
    return found


def wraps(obj: object) -> bool:
    """Whether an adapter takes ``obj`` (importing its adapter, if it has one, to find out)."""
    return _wrapper_of(obj) is not None


def wrap(obj: object) -> Result[Any] | None:
    """The handle an adapter makes for ``obj``, or None if no adapter takes it."""
    adapter = _wrapper_of(obj)
    if adapter is None or adapter.wrap is None:
        return None
    return adapter.wrap(obj)


def bind_by_id(h: Result[Any], task_id: str, engine: object) -> bool:
    """Bind ``h`` to the work ``task_id`` of ``engine`` through its adapter; False if none has it."""
    if engine is None:  # a default engine: the adapters of the libraries at hand may have one
        _load_available()
    for _ in range(2):
        if any(a.by_id is not None and a.by_id(h, task_id, engine) for a in adapters()):
            return True
        if engine is None or not load_for(engine):
            return False
    return False


def _load_available() -> None:
    """Import the adapters of every package that is imported, or could be."""
    from importlib.util import find_spec

    _load_where(lambda package: package in sys.modules or find_spec(package) is not None)


def find(ask: Callable[[Adapter], Any], obj: object) -> Any:
    """The first non-None answer of ``ask(adapter)``, importing ``obj``'s adapter if none answers."""
    for _ in range(2):
        for adapter in adapters():
            answer = ask(adapter)
            if answer is not None:
                return answer
        if not load_for(obj):
            return None
    return None
