"""The result store on a real Redis server (asyncbridge.contrib.redis_store): results read, awaited
and cancelled by id from another process (tests/store_peer.py), owners that die, forget and
Redis's own expiry, signed records, wake-ups by pub/sub, and a server that goes away and comes
back."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import pathlib
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import workers
from conftest import start_redis
from test_store import Peer, _coro, _double, _Trap, peer

import asyncbridge as ab
import asyncbridge._store as store_module
import asyncbridge._store_follow as watching
from asyncbridge.contrib import redis_store
from benchmarks._servers import free_port

KEY = "redis-store-test-key"
#: Seconds within which a write must reach a waiter whose watcher reads on its own every 30 s only
#: (slow_recheck): only a pub/sub wake-up can be that fast.
WOKEN_WITHIN = 5.0


@pytest.fixture
def url(redis_url: str) -> str:
    # Database 1 of the session's server (Celery's tests use 0); the key in the URL, for the peers.
    return redis_url.rsplit("/", 1)[0] + f"/1?key={KEY}"


@pytest.fixture
def store(url: str) -> Iterator[ab.ResultStore]:
    s = ab.ResultStore(url)
    yield s
    s.close()


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A plain redis-py client of the store's database, to look at (or forge) what is stored."""
    client = redis.Redis.from_url(url.split("?")[0])
    yield client
    client.close()


@pytest.fixture
def slow_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Watchers read on their own every 30 s only, busy (RECHECK) or idle (LINGER): a record that
    reaches a waiter faster came with a pub/sub wake-up."""
    monkeypatch.setattr(watching, "RECHECK", 30.0)
    monkeypatch.setattr(watching, "LINGER", 30.0)


def follow_to_the_end(store: ab.ResultStore, owner: Peer, gate: pathlib.Path) -> float:
    """Follow the work ``owner`` serves, release it, and return the seconds its outcome took to
    reach this process."""
    ident = owner.event()["id"]
    h: ab.Result[Any] = ab.Result(ident, store=store)
    gate.touch()
    released = time.monotonic()
    assert h.get(timeout=30) == "released"
    took = time.monotonic() - released
    assert owner.event() == {"value": "released", "state": "SUCCESS"}
    owner.end()
    return took


# -- results by id, in another process -------------------------------------------------------------


@pytest.mark.parametrize(
    "start",
    [
        lambda s: ab.task(engine="thread", store=s)(_double).delay(21),
        lambda s: ab.task(engine="process", store=s)(workers.square).delay(6),
        lambda s: ab.spawn(_coro(41), store=s),
    ],
    ids=["task-thread", "task-process", "spawn"],
)
def test_another_process_reads_a_stored_result_by_id(store: ab.ResultStore, url: str, start: Any) -> None:
    h = start(store)
    value = h.get(timeout=60)
    assert value in (42, 36)
    assert peer(url, "get", h.id)[-1] == {"value": value, "state": "SUCCESS"}


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


def test_cancel_from_another_process_stops_the_work(store: ab.ResultStore, url: str) -> None:
    h = ab.task(engine="thread", store=store)(workers.checks_forever).delay()
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
    assert peer(url, "get", ident)[-1]["error"] == "WorkerCrashed"  # from the record, for everyone


# -- ids gone: forgotten, expired ------------------------------------------------------------------


def test_an_id_the_store_never_had_is_unknown(store: ab.ResultStore) -> None:
    with pytest.raises(ab.UnknownResult, match="has no result by this id"):
        ab.Result("never-stored", store=store)


def test_a_forgotten_result_is_unknown_everywhere(store: ab.ResultStore, url: str, raw: Any) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    ab.Result(h.id, store=store).forget()
    with pytest.raises(ab.UnknownResult, match="forgotten"):
        ab.Result(h.id, store=store)
    assert "forgotten" in peer(url, "get", h.id)[0]["unknown"]
    assert not raw.exists(redis_store.RedisBackend.record_key(h.id))
    # the tombstone that says so goes by itself, GONE_KEPT later
    assert raw.pttl(redis_store.RedisBackend.gone_key(h.id)) > (redis_store.GONE_KEPT - 60) * 1000


def test_redis_removes_an_expired_result_itself(store: ab.ResultStore, url: str, raw: Any) -> None:
    h = ab.spawn(_coro(1), store=store, expires=0.3)
    assert h.get(timeout=30) == 2
    record, gone = redis_store.RedisBackend.record_key(h.id), redis_store.RedisBackend.gone_key(h.id)
    left = raw.pttl(record)  # Redis's own expiry, at the record's time (-2: it is gone already)
    assert left == -2 or 0 < left <= 350  # 0.3 s, give or take the rounding to ms and Redis's cached clock
    assert raw.pttl(gone) > (redis_store.GONE_KEPT - 60) * 1000  # the tombstone outlives it
    time.sleep(max(left, 0) / 1000 + 0.05)  # the expiry is a span of wall time: let it pass
    assert not raw.exists(record)  # gone without any purge
    assert "expired" in peer(url, "get", h.id)[0]["unknown"]
    with pytest.raises(ab.UnknownResult, match="expired"):
        ab.Result(h.id, store=store)
    assert store.purge() == 0  # nothing left for it to do


# -- signed ---------------------------------------------------------------------------------------


def test_a_redis_store_needs_a_key(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCBRIDGE_STORE_KEY", raising=False)
    with pytest.raises(ValueError, match="a redis store needs a signing key"):
        ab.ResultStore(redis_url)


def test_a_tampered_record_is_refused_and_never_unpickled(
    store: ab.ResultStore, raw: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    trap = tmp_path / "unpickled"
    monkeypatch.setenv("TRAP_FILE", str(trap))
    key = redis_store.RedisBackend.record_key(h.id)
    sealed = raw.hget(key, "record")
    raw.hset(key, "record", sealed[:32] + pickle.dumps({"state": "SUCCESS", "info": _Trap(), "seq": 99}))
    with pytest.raises(ab.StoreError, match="fails its signature check"):
        ab.Result(h.id, store=store)
    assert not trap.exists()


def test_a_store_with_another_key_cannot_read_the_records(store: ab.ResultStore, url: str) -> None:
    h = ab.spawn(_coro(1), store=store)
    assert h.get(timeout=30) == 2
    other = ab.ResultStore(url.split("?")[0], key="not the key")
    with pytest.raises(ab.StoreError, match="another key, or altered"):
        other.result(h.id)
    other.close()


# -- waking ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("slow_recheck")
def test_a_write_in_another_process_wakes_the_waiter_by_pub_sub(
    store: ab.ResultStore, url: str, tmp_path: pathlib.Path
) -> None:
    gate = tmp_path / "gate"
    assert follow_to_the_end(store, Peer(url, "serve", str(gate)), gate) < WOKEN_WITHIN


# -- a server that goes away --------------------------------------------------------------------------


def test_a_server_that_never_answers_fails_within_the_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "CONNECT_TIMEOUT", 0.2)
    monkeypatch.setattr(redis_store, "SOCKET_TIMEOUT", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as mute:  # the kernel accepts; nobody ever answers
        port = mute.getsockname()[1]
        s = ab.ResultStore(f"redis://127.0.0.1:{port}/0?key={KEY}")
        began = time.monotonic()
        with pytest.raises(ab.StoreError, match=rf"redis://127\.0\.0\.1:{port}/0 cannot be reached"):
            ab.Result("any", store=s)
        assert time.monotonic() - began < 2  # (1 + RETRIES) x 0.2 s, and some slack
        s.close()


@pytest.mark.usefixtures("slow_recheck")
def test_redis_down_is_a_clear_error_and_its_return_a_recovery(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = start_redis(port)
    url = f"redis://127.0.0.1:{port}/0?key={KEY}"
    s = ab.ResultStore(url)
    # Owned work keeps this process's watcher, and its subscription, alive through the outage.
    forever = ab.task(engine="thread", store=s)(workers.checks_forever).delay()
    try:
        assert s._watcher is not None
        listener = s._watcher.listener
        assert listener.subscribed.is_set() and listener.subscriptions == 1

        server.stop()
        listener.subscribed.clear()  # only a new subscription sets it again, and none can be made now
        began = time.monotonic()
        with pytest.raises(ab.StoreError, match=rf"redis://127\.0\.0\.1:{port}/0 cannot be reached") as err:
            ab.Result(forever.id, store=s)
        with pytest.raises(ab.StoreError, match="cannot be reached"):
            s.forget(forever.id)
        assert time.monotonic() - began < 10
        assert KEY not in str(err.value)

        server = start_redis(port)  # back on the same address, empty (no persistence)
        assert listener.subscribed.wait(10)  # the watcher subscribed again by itself
        assert listener.subscriptions == 2
        assert any(
            "pub/sub connection" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
        )
        assert not any(KEY in r.getMessage() for r in caplog.records)

        h = ab.spawn(_coro(1), store=s)  # writes work again, and reads from another process
        assert h.get(timeout=30) == 2
        assert peer(url, "get", h.id)[-1] == {"value": 2, "state": "SUCCESS"}
        gate = tmp_path / "gate"  # and the new subscription wakes this process's waiters
        assert follow_to_the_end(s, Peer(url, "serve", str(gate)), gate) < WOKEN_WITHIN
    finally:
        forever.cancel()
        forever.wait(30)
        s.close()
        server.stop()


def test_the_rediss_scheme_is_served() -> None:
    for scheme in ("redis", "rediss"):
        assert store_module._backend_factory(scheme, f"{scheme}://h/0") is redis_store.RedisBackend
