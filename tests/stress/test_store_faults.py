"""The durable result store (SQLite) under faults, with real processes (tests/store_writer.py):

- a writer SIGKILLed at random moments leaves whole records only, and every result it saw stored is
  read back after the crash, exact; the work it left in flight is reported crashed;
- eight processes write into one file at once, and nothing is lost nor refused ("database is locked");
- a process waiting on the results of eight writers gets every one of them (the latency is printed,
  as information);
- a store file deleted, or overwritten so that it no longer reads as a database, under a waiting
  process: the waiter ends (a value, or a clear error), it does not hang.

Every wait is ordered by an event (a JSON line of the other process, a line sent to it); the only
sleep is the random moment of a kill. The timeouts are hang guards only. Each test prints the counts
it ran; ``ASYNCBRIDGE_SOAK=1`` multiplies them.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest
import store_writer as sw
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/

import asyncbridge as ab

pytestmark = pytest.mark.stress

WRITER = str(pathlib.Path(sw.__file__).resolve())
HANG = 30.0  # a hang guard only

KILLS = 30  # per store file...
KILL_FILES = 1 * SOAK  # ...and files: KILLS * KILL_FILES writers SIGKILLed
KILL_AFTER_STORED = 4  # a kill comes after 0..3 stored results of the writer, then...
KILL_WINDOW = 0.05  # ...at a random moment within this many seconds (the writer stores ~300 results/s)
WRITERS = 8
PER_WRITER = 25  # results per writer (each: a PENDING record, STARTED, 3 progress reports, outcome)
WRITE_ROUNDS = 1 * SOAK  # eight writers at once, each round into a new file
FAULT_BOUND = 8.0  # a waiter under a broken store: eight rechecks (RECHECK = 1 s) after the outcome


# -- processes ----------------------------------------------------------------------------------------


class Proc:
    """A store_writer.py process: its stdout events (JSON lines) arrive on a queue, its stderr goes
    to a file, lines for its stdin are sent with :meth:`send`."""

    def __init__(
        self, url: str, log_dir: pathlib.Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.err_path = log_dir / f"{args[0]}-{os.urandom(4).hex()}.stderr"
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, WRITER, url, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
            )
        self.events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.seen: list[dict[str, Any]] = []
        self.pump = threading.Thread(target=self._pump, name=f"store-writer-{self.proc.pid}", daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            if line.endswith("\n"):  # a line cut by a SIGKILL was never said
                self.events.put(json.loads(line))
        out.close()
        self.events.put(None)

    def event(self, timeout: float = HANG) -> dict[str, Any]:
        """The next event (hang guard: ``timeout``)."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.args} said nothing within {timeout} s (hangs)") from None
        if event is None:
            self.events.put(None)
            self.proc.wait(HANG)
            raise AssertionError(f"{self.args} ended ({self.proc.returncode}): {self.stderr()}")
        self.seen.append(event)
        return event

    def expect(self, key: str) -> dict[str, Any]:
        """The next event, which must be a ``key`` one."""
        event = self.event()
        assert key in event, (key, event)
        return event

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _rest(self) -> list[dict[str, Any]]:
        self.pump.join(HANG)
        assert not self.pump.is_alive()
        rest: list[dict[str, Any]] = []
        while (event := self.events.get()) is not None:
            rest.append(event)
        self.seen += rest
        return rest

    def kill(self) -> list[dict[str, Any]]:
        """SIGKILL it, reap it (its pid is then gone for owner checks); the events it said meanwhile.
        It must have been alive and quiet until then (no error, nothing logged)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG)
        self._close_stdin()
        rest = self._rest()
        err = self.stderr()
        assert (self.proc.returncode, err) == (-signal.SIGKILL, ""), f"{self.args} before its kill:\n{err}"
        return rest

    def finish(self) -> list[dict[str, Any]]:
        """Wait for its own exit, which must be clean (exit 0, nothing on stderr); its last events."""
        self._close_stdin()
        self.proc.wait(HANG)
        rest = self._rest()
        err = self.stderr()
        assert "locked" not in err, f"{self.args}: a 'database is locked' escaped:\n{err}"
        assert (self.proc.returncode, err) == (0, ""), f"{self.args} exited {self.proc.returncode}:\n{err}"
        return rest

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self) -> None:
        """Whatever happened: no process, pipe or thread left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG)
        self._close_stdin()
        self.pump.join(HANG)


def store_url(tmp_path: pathlib.Path, n: int = 0) -> str:
    """A new store file (made with its key, so that no two writers race to make them)."""
    url = f"sqlite:///{tmp_path}/results-{n}.db"  # tmp_path is absolute: sqlite:////tmp/...
    ab.ResultStore(url).close()
    return url


@pytest.fixture
def start(tmp_path: pathlib.Path) -> Iterator[Callable[..., Proc]]:
    """Start a store_writer.py process on a store URL; every one is stopped after the test."""
    started: list[Proc] = []

    def run(url: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(url, tmp_path, *args, env=env)
        started.append(p)
        return p

    yield run
    for p in started:
        p.stop()


def db_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def integrity(path: str) -> str:
    db = sqlite3.connect(path)
    try:
        return "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def stored_ids(path: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [str(row[0]) for row in db.execute("SELECT id FROM results")]
    finally:
        db.close()


def torn_tail(path: str) -> bool:
    """Whether the WAL a crash left ends in a transaction cut short: frames of the current WAL
    generation (its salts) after the last commit frame, or a frame cut in the middle. Read before
    any connection opens the file (recovery then discards that tail). https://sqlite.org/fileformat.html"""
    try:
        with open(path + "-wal", "rb") as f:
            wal = f.read()
    except FileNotFoundError:
        return False
    if len(wal) < 32:
        return False
    page_size = int.from_bytes(wal[8:12], "big")
    salts = wal[16:24]
    frame = 24 + page_size
    offset = 32
    after_commit = False
    while offset + 24 <= len(wal) and wal[offset + 8 : offset + 16] == salts:
        if offset + frame > len(wal):
            return True  # a frame cut in the middle
        after_commit = int.from_bytes(wal[offset + 4 : offset + 8], "big") == 0  # 0: not a commit frame
        offset += frame
    return after_commit


def check_stored(store: ab.ResultStore, tag: str, event: dict[str, Any]) -> None:
    """A result its writer saw stored reads back exact: the value, or the failure it raised."""
    h: ab.Result[Any] = store.result(event["stored"])
    if event.get("failed"):
        exc = h.exception(timeout=HANG)
        assert isinstance(exc, ValueError), repr(exc)
        assert str(exc) == sw.failure_message(tag, event["i"])
    else:
        assert h.get(timeout=HANG) == sw.expected(tag, event["i"], event["made_at"]), event


def read_settled(h: ab.Result[Any]) -> str:
    """The state of an ended handle, its failure read (an unread one would be logged)."""
    assert h.done(), h
    h.exception(timeout=0)
    return str(h.state)


def spread(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"min {ordered[0] * 1000:.1f} ms, median {statistics.median(ordered) * 1000:.1f} ms, "
        f"p90 {at(0.9):.1f} ms, p99 {at(0.99):.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


# -- a writer killed at any moment -------------------------------------------------------------------


def verify_all(url: str) -> tuple[Counter[str], list[str]]:
    """Open the store afresh and read every record in it through ``result()`` (a torn or unsigned one
    is a StoreError; each is unpickled); then close it, leaving no connection to the file. Returns
    the states of the ended ones, and the ids of those still in flight."""
    s = ab.ResultStore(url)
    try:
        states: Counter[str] = Counter()
        in_flight = []
        for ident in stored_ids(db_path(url)):
            h = s.result(ident)
            if h.done():
                states[read_settled(h)] += 1
            else:
                in_flight.append(ident)
        return states, in_flight
    finally:
        s.close()  # its watcher stops, its connection closes: none to the file is left here


def kill_writers(url: str, start: Callable[..., Proc], rng: random.Random, n: int) -> Counter[str]:
    """KILLS churn writers on ``url``, one after the other, each SIGKILLed at a random moment, the
    store checked after each kill; returns what was counted."""
    path = db_path(url)
    seen: Counter[str] = Counter()
    stored: list[tuple[str, dict[str, Any]]] = []
    in_flight: set[str] = set()
    states: Counter[str] = Counter()
    writer = start(url, "churn", f"w{n}-0")
    for r in range(KILLS):
        current, tag = writer, f"w{n}-{r}"
        current.expect("ready")
        if r + 1 < KILLS:  # the next one starts up (it opens the store only after its go-ahead)
            writer = start(url, "churn", f"w{n}-{r + 1}")
        current.send("go")
        for _ in range(rng.randrange(KILL_AFTER_STORED)):
            current.expect("stored")
        time.sleep(rng.uniform(0, KILL_WINDOW))  # the moment of the fault, at random: not a synchronisation
        current.kill()
        seen["WAL left to recover"] += os.path.exists(path + "-wal") and os.path.getsize(path + "-wal") > 0
        seen["cut mid-transaction"] += torn_tail(path)
        assert integrity(path) == "ok", f"after kill {r}"
        states, now_in_flight = verify_all(url)
        seen["work in flight"] += bool(set(now_in_flight) - in_flight)
        in_flight.update(now_in_flight)
        check = ab.ResultStore(url)
        try:
            for event in current.seen:
                if "stored" in event:
                    check_stored(check, tag, event)
                    stored.append((tag, event))
        finally:
            check.close()
    assert sum(states.values()) + len(in_flight) == len(stored_ids(path))

    reader = ab.ResultStore(url)  # follows the work left in flight: its owners are gone
    try:
        handles = [reader.result(ident) for ident in in_flight]
        crashed = Counter(type(h.exception(timeout=HANG)).__name__ for h in handles)
        for tag, event in stored:
            check_stored(reader, tag, event)
    finally:
        reader.close()
    assert set(crashed) <= {"WorkerCrashed"}, crashed
    final, left = verify_all(url)
    assert not left and integrity(path) == "ok"
    seen["records"] += sum(final.values())
    seen["stored seen"] += len(stored)
    seen["crashed"] += sum(crashed.values())
    seen["bytes"] += os.path.getsize(path)
    seen.update(final)
    return seen


@pytest.mark.timeout(120 * SOAK)  # the soak's 50x needs the room
def test_a_writer_killed_at_any_moment_leaves_whole_records(
    tmp_path: pathlib.Path, start: Callable[..., Proc], quiet_library: None
) -> None:
    """KILLS writers per file, each SIGKILLed at a random moment (opening the store, or while four
    of its threads store progress and outcomes of 0 B to 100 KB). The killed writer is the only
    process with the file open: the next opener recovers the store from what the crash left (its
    WAL). After each kill: the file passes ``integrity_check``; every record in it (all of them,
    every time) verifies and unpickles through ``result()``; every result the killed writer saw
    stored (its ``get()`` returned) reads back exact. At the end, the work the writers left in
    flight ends WorkerCrashed for a reader (its owner is gone)."""
    rng = random.Random(20240611)
    t0 = time.monotonic()
    seen: Counter[str] = Counter()
    for n in range(KILL_FILES):
        seen += kill_writers(store_url(tmp_path, n), start, rng, n)
    print(
        f"\n[store: writer SIGKILL] {KILLS * KILL_FILES} kills into {KILL_FILES} file(s): "
        f"{seen['work in flight']} with work in flight, {seen['WAL left to recover']} leaving a WAL "
        f"to recover, {seen['cut mid-transaction']} of them with a transaction cut short in it; "
        f"{seen['records']} records, all verified after every kill; {seen['stored seen']} results seen "
        f"stored, read back exact; {seen['crashed']} left in flight, then WorkerCrashed; final states "
        f"SUCCESS {seen['SUCCESS']}, FAILURE {seen['FAILURE']}; {time.monotonic() - t0:.1f} s"
    )


# -- eight processes at once ---------------------------------------------------------------------------


def start_batch(url: str, start: Callable[..., Proc], n: int) -> list[tuple[Proc, str, list[dict[str, Any]]]]:
    """WRITERS batch writers, each with ``n`` tasks started (their PENDING records written) and
    held; returns (writer, tag, its started events)."""
    writers = [(start(url, "batch", f"b{k}", str(n)), f"b{k}") for k in range(WRITERS)]
    out = []
    for w, tag in writers:
        started = [w.expect("started") for _ in range(n)]
        w.expect("ready")
        out.append((w, tag, started))
    return out


@pytest.mark.timeout(120 * SOAK)  # the soak's 50x needs the room
def test_eight_processes_write_at_once(
    tmp_path: pathlib.Path, start: Callable[..., Proc], quiet_library: None
) -> None:
    """Eight writers each start PER_WRITER tasks (their PENDING records: eight processes writing),
    then all run at once (up to six threads each writing progress and outcomes): every writer exits
    0 with a clean stderr (no "database is locked" anywhere), every result of every writer reads
    back exact, the file passes ``integrity_check``."""
    writing: list[float] = []
    t0 = time.monotonic()
    for n in range(WRITE_ROUNDS):
        url = store_url(tmp_path, n)
        writers = start_batch(url, start, PER_WRITER)
        t_go = time.monotonic()
        for w, _, _ in writers:
            w.send("go")
        results: list[tuple[str, dict[str, Any]]] = []
        for w, tag, started in writers:
            w.finish()
            mine = [e for e in w.seen if "stored" in e]
            assert [e["stored"] for e in mine] == [e["started"] for e in started]
            results += [(tag, e) for e in mine]
        writing.append(time.monotonic() - t_go)
        assert len({e["stored"] for _, e in results}) == WRITERS * PER_WRITER
        store = ab.ResultStore(url)
        try:
            for tag, event in results:
                check_stored(store, tag, event)
        finally:
            store.close()
        assert len(stored_ids(db_path(url))) == WRITERS * PER_WRITER
        assert integrity(db_path(url)) == "ok"
    commits = WRITE_ROUNDS * WRITERS * PER_WRITER * (3 + sw.REPORTS)
    print(
        f"\n[store: {WRITERS} writers at once] {WRITE_ROUNDS} round(s) of {WRITERS} x {PER_WRITER} results "
        f"({commits} commits), all read back exact, no error; running after the go: "
        f"{max(writing):.1f} s at most; {time.monotonic() - t0:.1f} s"
    )


# -- a reader during the writes ------------------------------------------------------------------------


@pytest.mark.timeout(120 * SOAK)  # the soak's 50x needs the room
def test_a_reader_gets_every_result_of_eight_writers(
    tmp_path: pathlib.Path, start: Callable[..., Proc], quiet_library: None
) -> None:
    """A reader process follows every result of eight writers (``ab.Result(id, store=url)``, bound
    while the work is held), then the writers run: each result arrives, exact, none missing, and
    the reader exits clean. The latency (end of the work to the reader's done-callback) is printed,
    not asserted."""
    latencies: list[float] = []
    arrived = 0
    t0 = time.monotonic()
    for n in range(WRITE_ROUNDS):
        url = store_url(tmp_path, n)
        reader = start(url, "read")
        writers = start_batch(url, start, PER_WRITER)
        for _, tag, started in writers:
            for e in started:
                reader.send(json.dumps({"id": e["started"], "tag": tag, "i": e["i"]}))
        reader.send("end")
        assert reader.expect("following")["following"] == WRITERS * PER_WRITER
        for w, _, _ in writers:
            w.send("go")
        for w, _, _ in writers:
            w.finish()
        arrivals = reader.finish()
        missing = [e for e in arrivals if "missing" in e]
        assert not missing, missing
        wrong = [e for e in arrivals if not e["ok"]]
        assert not wrong, wrong
        assert len(arrivals) == WRITERS * PER_WRITER
        arrived += len(arrivals)
        latencies += [e["latency"] for e in arrivals if e["latency"] is not None]
    print(
        f"\n[store: reader during writes] {WRITE_ROUNDS} round(s): {arrived} results of {WRITERS} writers "
        f"each, all arrived exact; latency (work ended -> reader's callback) over the {len(latencies)} "
        f"values: {spread(latencies)}; {time.monotonic() - t0:.1f} s"
    )


# -- the file deleted or broken under a waiter -----------------------------------------------------------


def delete(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        os.unlink(path + suffix)


def overwrite(path: str) -> None:
    """Not a database any more: every byte of the file and of its log replaced."""
    for suffix in ("", "-wal"):
        with open(path + suffix, "r+b") as f:
            f.write(b"\xa5" * os.path.getsize(path + suffix))


CLEAR_ERRORS = ("StoreError", "UnknownResult", "WorkerCrashed")


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(delete, id="deleted"),
        pytest.param(overwrite, id="overwritten"),
    ],
)
def test_a_store_file_broken_under_a_waiter_does_not_hang_it(
    tmp_path: pathlib.Path, start: Callable[..., Proc], fault: Callable[[str], None]
) -> None:
    """An owner process runs work that reports progress twice; a waiter process follows it (its
    watcher brought step 2: it reads the file). Then the file is broken, and the work ends: the
    waiter ends too, with the value (what it still reads) or a clear error (StoreError,
    UnknownResult, WorkerCrashed) within FAULT_BOUND. (What the owner and a new reader are told is
    printed.)"""
    url = store_url(tmp_path)
    owner = start(url, "hold")
    ident = owner.expect("started")["started"]
    waiter = start(url, "follow", ident, env={"STORE_WRITER_FOLLOW_BOUND": str(FAULT_BOUND)})
    waiter.expect("bound")
    owner.send("step 2")
    assert waiter.event() == {"following": 2}
    fault(db_path(url))
    owner.send("end")
    owner_end = owner.event()
    end = waiter.event(timeout=FAULT_BOUND + HANG)
    try:  # a new reader, in this process
        fresh = ab.ResultStore(url)
        try:
            later = repr(fresh.result(ident).get(timeout=HANG))
        finally:
            fresh.close()
    except Exception as exc:
        later = repr(exc)
    print(f"\n[store: file {fault.__name__}] owner: {owner_end}; waiter: {end}; a new reader: {later}")
    assert "timeout" not in end, f"the waiter still waits {FAULT_BOUND} s after the work ended: {end}"
    assert end.get("value") == "released" or end.get("error") in CLEAR_ERRORS, end
    owner.finish()
    waiter.finish()
