"""Shared fixtures: both anyio backends, switch-interval tightening, and a thread-leak guard."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest

#: ASYNCBRIDGE_SOAK=1 multiplies every stress count by this.
SOAK = 50 if os.environ.get("ASYNCBRIDGE_SOAK") else 1

# Long-lived threads kept on purpose: the library's own (named, started on first use) and the idle
# thread caches of trio and anyio, which outlive a test by design.
LIBRARY_THREADS = (
    "asyncbridge-loop",
    "asyncbridge-worker",
    "asyncbridge-process",
    "Trio thread",
    "AnyIO worker thread",
)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, to widen race windows."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _foreign_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith(LIBRARY_THREADS)
    }


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread behind (the library's named threads excepted)."""
    before = _foreign_threads()
    yield
    leaked = _foreign_threads() - before
    for t in leaked:
        t.join(5.0)  # a thread that is finishing gets its chance; a leak stays alive
    alive = [t.name for t in leaked if t.is_alive()]
    assert not alive, f"threads leaked by this test: {alive}"
