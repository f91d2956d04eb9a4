"""The durable result store (SQLite): results fetched, awaited and cancelled by id from another
process (tests/store_peer.py), unknown ids answered truthfully, forget and expiry, signed records,
a size limit, and work whose owning process dies."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import pathlib
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import workers
from celery import Celery

import asyncbridge as ab

PEER = str(pathlib.Path(__file__).with_name("store_peer.py"))


@pytest.fixture
def url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path}/results.db"  # tmp_path is absolute: sqlite:////tmp/...


@pytest.fixture
def store(url: str) -> Iterator[ab.ResultStore]:
    s = ab.ResultStore(url)
    yield s
    s.close()


class Peer:
    """A second Python process running store_peer.py; its events are JSON lines."""

    def __init__(self, url: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen(
            [sys.executable, PEER, url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            raise AssertionError(f"the peer ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
        event: dict[str, Any] = json.loads(line)
        return event

    def end(self) -> None:
        """Wait for the peer's exit (closing its pipes); it must have succeeded."""
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)


def peer(url: str, *args: str) -> list[dict[str, Any]]:
    """Run the peer to its end; its events."""
    p = Peer(url, *args)
    out, err = p.proc.communicate(timeout=60)
    assert p.proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _double(x: int) -> int:
    return 2 * x


async def _coro(x: int) -> int:
    return x + 1


def _tracked_future(store: ab.ResultStore) -> ab.Result[int]:
    with cf.ThreadPoolExecutor(1) as pool:
        return store.track(ab.wrap(pool.submit(workers.square, 6)))


# -- recording: every kind of work, read by another process --------------------------------------------


@pytest.mark.parametrize(
    "start",
    [
        lambda s: ab.task(engine="thread", store=s)(_double).delay(21),
        lambda s: ab.task(engine="process", store=s)(workers.square).delay(6),
        lambda s: ab.spawn(_coro(41), store=s),
        lambda s: s.run_in_thread(_double, 21),
        lambda s: s.run_in_process(workers.square, 6),
        lambda s: s.track(ab.run_in_thread(_double, 21)),
        lambda s: _tracked_future(s),
    ],
    ids=["task-thread", "task-process", "spawn", "store-thread", "store-process", "track", "track-cf"],
)
def test_another_process_reads_a_stored_result_by_id(store: ab.ResultStore, url: str, start: Any) -> None:
    h = start(store)
    value = h.get(timeout=60)
    assert value in (42, 36)
    events = peer(url, "get", h.id)
    assert events[-1] == {"value": value, "state": "SUCCESS"}


def test_a_stored_failure_keeps_its_type_and_traceback(store: ab.ResultStore, url: str) -> None:
    h = ab.task(engine="thread", store=store)(workers.raise_custom).delay("stored")
    with pytest.raises(workers.CustomError):
        h.get(timeout=30)
    [seen, end] = peer(url, "get", h.id)
    assert seen["seen"] == "FAILURE"
    assert end["error"] == "CustomError" and "stored" in end["message"]
    assert "raise CustomError(message)" in end["traceback"]  # the owner's frames, as text


def test_another_process_sees_progress_then_awaits_the_end(
    store: ab.ResultStore, url: str, tmp_path: pathlib.Path
) -> None:
    gate = tmp_path / "gate"
    owner = Peer(url, "serve", str(gate))
    ident = owner.event()["id"]
    h: ab.Result[Any] = ab.Result(ident, store=store)
    progressed = threading.Event()
    h.on_progress(lambda _meta: progressed.set())
    if h.state != ab.State.PROGRESS:
        assert progressed.wait(30)
    assert h.info == {"step": 1}
    waiter = Peer(url, "wait", ident)
    assert waiter.event()["seen"] == "PROGRESS"
    gate.touch()
    assert h.get(timeout=30) == "released"
    assert waiter.event() == {"value": "released", "state": "SUCCESS"}
    assert owner.event() == {"value": "released", "state": "SUCCESS"}
    waiter.end()
    owner.end()


@pytest.mark.anyio
async def test_await_a_stored_result_of_another_process(
    anyio_backend: Any, store: ab.ResultStore, url: str, tmp_path: pathlib.Path
) -> None:
    gate = tmp_path / "gate"
    owner = Peer(url, "serve", str(gate))
    ident = owner.event()["id"]
    h: ab.Result[Any] = ab.Result(ident, store=store)
    gate.touch()
    with anyio.fail_after(30):
        assert await h == "released"
    owner.end()


def test_cancel_from_another_process_stops_the_work(store: ab.ResultStore, url: str) -> None:
    h = ab.task(engine="thread", store=store)(workers.checks_forever).delay()
    started = threading.Event()
    h.add_done_callback(lambda _h: started.set())
    [seen, end] = peer(url, "cancel", h.id)
    assert seen["seen"] in ("PENDING", "STARTED")
    assert end["state"] == "REVOKED" and end["error"] == "CancelledError"
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)


def test_work_whose_process_died_fails_its_waiters(store: ab.ResultStore, url: str) -> None:
    owner = Peer(url, "serve-forever")
    ident = owner.event()["id"]
    h: ab.Result[Any] = ab.Result(ident, store=store)
    assert h.state in (ab.State.PENDING, ab.State.STARTED)
    owner.kill()
    with pytest.raises(ab.WorkerCrashed, match="ended before its work did"):
        h.get(timeout=30)
    # and every later reader is told the same, from the record
    assert peer(url, "get", ident)[-1]["error"] == "WorkerCrashed"


# -- unknown ids ------------------------------------------------------------------------------------


def test_an_id_the_store_never_had_is_unknown_at_once(store: ab.ResultStore, url: str) -> None:
    with pytest.raises(ab.UnknownResult, match="has no result by this id"):
        ab.Result("never-stored", store=store)
    assert "has no result by this id" in peer(url, "get", "never-stored")[0]["unknown"]


def test_a_forgotten_result_is_unknown_everywhere(store: ab.ResultStore, url: str) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    ab.Result(h.id, store=store).forget()
    with pytest.raises(ab.UnknownResult, match="forgotten"):
        ab.Result(h.id, store=store)
    assert "forgotten" in peer(url, "get", h.id)[0]["unknown"]


def test_an_expired_result_is_unknown_and_purged(store: ab.ResultStore, url: str) -> None:
    h = ab.spawn(_coro(1), store=store, expires=0.05)
    assert h.get(timeout=30) == 2
    ended = threading.Event()
    ended.wait(0.1)  # the expiry is a span of wall time: let it pass
    assert "expired" in peer(url, "get", h.id)[0]["unknown"]
    assert store.purge() == 1
    with pytest.raises(ab.UnknownResult, match="expired"):
        ab.Result(h.id, store=store)


def test_expires_needs_a_store() -> None:
    with pytest.raises(ValueError, match="expires= is for stored results"):
        ab.task(engine="thread", expires=5)(_double)


# -- signed, private, bounded -----------------------------------------------------------------------------


class _Trap:
    def __reduce__(self) -> Any:
        return (pathlib.Path.touch, (pathlib.Path(os.environ["TRAP_FILE"]),))


def test_a_tampered_record_is_refused_and_never_unpickled(
    store: ab.ResultStore, url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    trap = tmp_path / "unpickled"
    monkeypatch.setenv("TRAP_FILE", str(trap))
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    [(sealed,)] = db.execute("SELECT record FROM results WHERE id = ?", (h.id,))
    forged = sealed[:32] + pickle.dumps({"state": "SUCCESS", "info": _Trap(), "seq": 99})
    db.execute("UPDATE results SET record = ? WHERE id = ?", (forged, h.id))
    db.commit()
    db.close()
    with pytest.raises(ab.StoreError, match="fails its signature check"):
        ab.Result(h.id, store=store)
    assert not trap.exists()


def test_a_store_with_another_key_cannot_read_the_records(store: ab.ResultStore, url: str) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    other = ab.ResultStore(url, key="not the key")
    with pytest.raises(ab.StoreError, match="another key, or altered"):
        other.result(h.id)
    other.close()


def test_the_files_are_readable_by_their_owner_only(store: ab.ResultStore, url: str) -> None:
    assert ab.spawn(_coro(1), store=store).get(timeout=30) == 2
    path = url.removeprefix("sqlite:///")
    for name in (path, path + ".key"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name


def test_a_result_above_the_size_limit_fails_the_work(url: str) -> None:
    small = ab.ResultStore(url, max_size=1_000)
    h = ab.task(engine="thread", store=small)(bytes).delay(10_000)
    with pytest.raises(ab.StoreError, match="above the store's max_size of 1,000"):
        h.get(timeout=30)
    assert peer(url, "get", h.id)[-1]["error"] == "StoreError"
    small.close()


def test_bad_store_arguments_are_clear_errors(url: str) -> None:
    with pytest.raises(TypeError, match="store= takes a ResultStore, a store URL or True"):
        ab.spawn(_coro(1), store=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no result store for"):
        ab.ResultStore("mongodb://nowhere/0")
    with pytest.raises(ValueError, match="max_size must be"):
        ab.ResultStore(url, max_size=0)
    app = Celery("x", backend="cache+memory://")
    with pytest.raises(ValueError, match="store= is for work asyncbridge runs"):
        ab.task(engine=app, store=url)(_double)


def test_the_default_store_is_found_by_id_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("ASYNCBRIDGE_STORE", raising=False)
    h = ab.spawn(_coro(9), store=True)
    assert h.get(timeout=30) == 10
    assert (tmp_path / "asyncbridge" / "results.db").exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "import sys, asyncbridge as ab; print(ab.Result(sys.argv[1]).get(timeout=30))"
    done = subprocess.run(
        [sys.executable, "-c", code, h.id], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"  # no store= in the other process: the default store has it
