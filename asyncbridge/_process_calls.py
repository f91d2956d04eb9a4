"""What a call must be to reach a worker process, and what the caller is told when it is not.

A call is pickled in the calling thread: what cannot be pickled (a lambda, a local function, an
open file) fails the call at once with a ``TypeError`` naming the function or the argument and what
to do. With spawn and forkserver, a worker imports the parent's main module again before anything
else, so what is defined in a main module that workers do not import (``python -c``, an
interactive session, a package's ``__main__``) is refused at the call too, naming it.
"""

from __future__ import annotations

import io
import pickle
from typing import Any


def _unpicklable(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> TypeError:
    hint = "Pass a module-level function and picklable values, or use run_in_thread()"
    try:
        pickle.dumps(fn)
    except Exception as fn_exc:
        why = _not_importable(fn)
        if why is not None:
            return TypeError(
                f"run_in_process() cannot send the function {fn!r} to a worker process: {why}, and a "
                f"worker imports a function by its module and name. Make it a module-level function "
                f"(def at a module's top level), or use run_in_thread() ({fn_exc})"
            )
        return TypeError(
            f"run_in_process() cannot send the function {fn!r} to a worker process: {fn_exc}. {hint}"
        )
    for index, arg in enumerate(args):
        try:
            pickle.dumps(arg)
        except Exception as arg_exc:
            return TypeError(
                f"run_in_process() cannot send argument {index} ({arg!r}) to a worker process: "
                f"{arg_exc}. {hint}"
            )
    for name, arg in kwargs.items():
        try:
            pickle.dumps(arg)
        except Exception as arg_exc:
            return TypeError(
                f"run_in_process() cannot send argument {name}={arg!r} to a worker process: {arg_exc}. {hint}"
            )
    return TypeError(f"run_in_process() cannot send its call to a worker process: {exc}. {hint}")


def _not_importable(fn: object) -> str | None:
    """Why a worker could never import ``fn`` by name (a lambda, a nested function), or None."""
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    if "<lambda>" in qualname:
        return "a lambda has no name"
    if "<locals>" in qualname:
        return f"{qualname.rsplit('.', 1)[-1]} is defined inside another function ({qualname})"
    return None


class _MainFinder(pickle.Pickler):
    """Pickles into nothing, noting each object that pickling would look up in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.found: dict[str, None] = {}  # names in order, once each

    def reducer_override(self, obj: Any) -> Any:
        # Functions, classes and instances of those classes say where they come from; so does a
        # task (pickled as a lookup of its module's name, with no reference to a global).
        try:
            module = getattr(obj, "__module__", None)
            name = getattr(obj, "__qualname__", None)
        except Exception:  # a proxy or a broken __getattr__: not ours to judge
            module = name = None
        if isinstance(module, str) and module == "__main__":
            self.found[name if isinstance(name, str) else type(obj).__qualname__] = None
        return NotImplemented  # pickle it as usual


def _refuse_main_objects(call: tuple[Any, ...]) -> None:
    """Refuse a call that needs something defined in a main module that workers do not import
    (``python -c``, an interactive session, a package's ``__main__``): a spawn or forkserver worker
    would fail to unpickle it. Called only when the pickled call mentions ``__main__`` at all."""
    finder = _MainFinder()
    try:
        finder.dump(call)
    except Exception:
        return  # it pickled once already; if not now, let the worker say what it finds
    if not finder.found:
        return  # "__main__" was only a string among the arguments
    names = ", ".join(finder.found)
    raise TypeError(
        f"run_in_process() cannot send {names} to a worker process: {names} is defined in __main__, "
        f"and a worker process cannot import it from there: this program's main module has no file "
        f"(python -c, an interactive session) or is a package's __main__, which workers never "
        f"import. Define it in a module of its own and import it from there, or use run_in_thread()"
    )
