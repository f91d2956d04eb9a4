"""The public surface: exported, documented, typed, and installed like a user would get it."""

from __future__ import annotations

import inspect
import pathlib

import asyncbridge


def test_public_names_are_exported_documented_and_public() -> None:
    visible = {n for n, o in vars(asyncbridge).items() if not n.startswith("_") and not inspect.ismodule(o)}
    assert set(asyncbridge.__all__) == visible
    # sorted as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions, each alphabetically
    assert list(asyncbridge.__all__) == sorted(
        set(asyncbridge.__all__), key=lambda n: (not n.isupper(), not n[:1].isupper(), n)
    )
    for name in asyncbridge.__all__:
        obj = getattr(asyncbridge, name)
        if isinstance(obj, str):  # the return_when constants, equal to concurrent.futures' own
            continue
        assert obj.__doc__, f"asyncbridge.{name} has no docstring"
        assert obj.__module__ == "asyncbridge", f"{name} still shows {obj.__module__}"
        for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
            if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                assert member.__doc__, f"asyncbridge.{name}.{attr} has no docstring"


def test_the_package_ships_py_typed() -> None:
    assert (pathlib.Path(asyncbridge.__file__).parent / "py.typed").is_file()


def test_import_starts_no_threads() -> None:
    import subprocess
    import sys

    code = "import threading, asyncbridge; print(threading.active_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1" and out.stderr == ""
