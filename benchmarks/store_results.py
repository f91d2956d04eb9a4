"""The result store: results by id across processes (docs/store.md), against Celery's own backends.

Everything crosses a real process boundary. The benchmark process (*A*, where the timing runs)
writes; a long-lived *helper* process (*B*, a fresh ``python -c`` started once per run, so its
start-up is never timed) reads or waits, fed ids over a pipe (``multiprocessing.connection`` on two
``os.pipe`` s). Both use a SQLite file in a temporary directory and, if ``redis-server`` and the
redis client are installed, a ``redis-server`` on a free loopback port that the family starts. The
helper, the server and the files are stopped and removed through the run's ``ExitStack``; a missing
optional dependency skips its candidates with the reason.

- *round trip* (SQLite; Redis): write the final state of a small result (a dict of three keys), then
  read it back by id in B, singly timed: A's write (``perf_counter`` in A) plus B's read
  (``perf_counter`` in B, sent back), so that the pipe between them, the same for every candidate,
  is not in the figure. asyncbridge: ``store.track(h)`` of a handle that already has its value (the
  lowest-overhead public way to write a final record: one write), then
  ``ab.Result(id, store=...).get()`` in B. Celery: ``app.backend.store_result(id, value,
  "SUCCESS")``, then ``AsyncResult(id, app=app).get()`` in B. Floor: Celery's backend of the same
  kind. On SQLite that is Celery's SQLAlchemy backend (``db+sqlite:///``, needs ``sqlalchemy``) with
  its engine kept, as in a prefork worker's child (Celery sets ``session_manager.forked`` there
  after the fork; the family sets it by hand in A and B). Two peers: the same backend as a plain
  process runs it (a new engine, connection and sessionmaker per call: a web server that is not
  started through ``multiprocessing`` does), and the backend with its engine kept on a file in WAL
  mode with ``synchronous=NORMAL`` (``database_engine_callback``), asyncbridge's own settings: by
  default SQLite keeps a rollback journal and syncs it to disk on every commit, which asyncbridge's
  store does not, so this peer compares like with like. On Redis: Celery's Redis backend on the
  same server; its ``backend.get_task_meta(id)`` (one GET, no pub/sub subscription, a meta dict
  instead of the value) is a peer. The asyncbridge Redis store (``asyncbridge.contrib.redis_store``,
  ``redis://...?key=``) is skipped, with the reason, if it cannot be imported. The goal (summary
  table): faster than the floor; the Celery peers that are as fast are named beside it. B's reads
  follow each other closely, so its store watcher (a thread that ends a second after its last
  followed handle) stays up between them: a read after a pause starts one again (a thread, and a
  socket or a Redis subscription), which these figures do not include.
- *wake-up*: B blocks in ``ab.Result(id, store=...).get()`` on a PENDING record that A made with
  ``store.track(ab.Result())``; A waits :data:`SETTLE` seconds after B said it is about to block,
  then reads the clock and calls ``h.set_result(value)`` (which stores the outcome and wakes the
  store's processes); B reads the clock as its ``get()`` returns. The clock is ``time.monotonic()``:
  ``CLOCK_MONOTONIC`` on Linux, one clock for the whole system, so readings of two processes
  compare (not so on every platform: the family is for Linux). SQLite floor: the helper's own pipe
  (A sends one message, B reads the clock on receiving it), the least a wake-up across processes
  costs; the goal is a median within :data:`WAKE_SQLITE_GOAL`. Redis floor: Celery's
  ``AsyncResult(id).get()`` woken by ``backend.store_result`` (pub/sub) on the same server; goal:
  within :data:`WAKE_REDIS_GOAL` of it.
- *idle waiter*: a second helper (asyncbridge only, so nothing else runs in it) follows
  :data:`IDLE_WAITERS` PENDING records of the SQLite store, blocked in ``cf.wait`` on their
  handles, for :data:`IDLE_SPAN` seconds (2 s in the default run) in which nothing is written; its
  CPU time over that span (``resource.getrusage(RUSAGE_SELF)`` in B: every thread of it, the
  store's watcher included) per second of waiting is the sample, one per block. No floor; goal:
  under :data:`IDLE_GOAL` of one CPU.

Round-trip and wake-up blocks stop early once over :data:`BLOCK_BUDGET` (with :data:`MIN_SAMPLES`
samples at least), so that a slow candidate (a disk busy with other work, a wake-up that falls back
to the store's one-second re-read) cannot make the family run for minutes.

What the store costs work that does not use one (making a handle, awaiting it) is what the
``memory`` (``create_memory.py``) and ``hop-latency`` / ``hop-throughput`` families measure
already: work started without ``store=`` pays one ``is None`` check for it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ._harness import (
    QUICK,
    Block,
    Candidate,
    Config,
    Estimate,
    Family,
    Group,
    GroupResult,
    Role,
    _error_text,
    have,
    perf_counter,
)
from ._report import fmt

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack
    from typing import IO

ROOT = Path(__file__).resolve().parent.parent
#: The small result every candidate stores (JSON-able, for Celery's default serializer).
VALUE: dict[str, Any] = {"report": 7, "status": "done", "rows": 42}
#: Seconds a read or a wait in the helper may take before it fails the block.
GET_TIMEOUT = 10.0
#: Seconds the helper may take to start (imports) and to answer one request.
HELPER_TIMEOUT = 60.0
#: Wake-up: seconds A waits after B said it is about to block, before the store call.
SETTLE = 0.005
#: Idle: the pending results followed, the seconds of one op (the span is ops x this), and the
#: seconds the helper settles after binding them before the span starts.
IDLE_WAITERS = 100
IDLE_OP = 0.1
IDLE_OPS = 30
IDLE_SPAN = IDLE_OPS * IDLE_OP
IDLE_SETTLE = 0.3
#: The goals: asyncbridge's round trips faster than the floor (Celery's backend of the same kind);
#: a SQLite wake-up median within 20 ms; a Redis wake-up within 1.2x of Celery's; an idle waiter
#: under 1% of one CPU.
WAKE_SQLITE_GOAL = 0.020
WAKE_REDIS_GOAL = 1.2
IDLE_GOAL = 0.01

#: Seconds after which a round-trip or wake-up block stops early (with :data:`MIN_SAMPLES` at least),
#: by configuration name: a slow candidate (a disk busy with other work, a wake-up that falls back to
#: polling) must not make the family run for minutes.
BLOCK_BUDGET = {"full": 1.0, "default": 0.35, "quick": 0.25}
MIN_SAMPLES = 3
#: Ops and rounds per group, by configuration name.
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "full": {"rt": (100, 5), "wake": (40, 5), "idle": (IDLE_OPS, 3)},
    "default": {"rt": (50, 3), "wake": (20, 3), "idle": (20, 2)},
    "quick": {"rt": (20, 2), "wake": (10, 2), "idle": (IDLE_OPS, 1)},
}

RT_AB_SQLITE = "track(h) + Result(id, store=sqlite).get()"
RT_CELERY_DB = "store_result + AsyncResult(id).get(), db+sqlite, engine kept"
RT_CELERY_DB_PLAIN = "store_result + AsyncResult(id).get(), db+sqlite, plain process"
RT_CELERY_DB_WAL = "store_result + AsyncResult(id).get(), db+sqlite, WAL"
RT_AB_REDIS = "track(h) + Result(id, store=redis).get()"
RT_CELERY_REDIS = "store_result + AsyncResult(id).get(), redis"
RT_CELERY_REDIS_META = "store_result + backend.get_task_meta(id), redis"
WAKE_PIPE = "one message over the helper's pipe"
WAKE_AB_SQLITE = "h.set_result(v) -> Result(id, store=sqlite).get() returns"
WAKE_CELERY_REDIS = "backend.store_result -> AsyncResult(id).get() returns"
WAKE_AB_REDIS = "h.set_result(v) -> Result(id, store=redis).get() returns"
IDLE_AB = f"{IDLE_WAITERS} x Result(id, store=sqlite) pending, in cf.wait"

#: The Celery apps, in A and in B.
CELERY_DB, CELERY_DB_PLAIN, CELERY_DB_WAL, CELERY_REDIS = "db", "db-plain", "db-wal", "redis"


# -- the helper: the other process ----------------------------------------------------------------


class Helper:
    """A long-lived ``python -c`` process that runs B's side of each measurement, one request at a
    time. Requests and answers are pickled over two pipes; each answer carries its request's number,
    so that a late answer of a request that timed out is dropped, not taken for the next one's."""

    def __init__(self, name: str, config: dict[str, Any], log_dir: Path) -> None:
        self.name = name
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self._log: IO[bytes] = open(log_dir / f"{name}.log", "w+b")  # noqa: SIM115 (closed by stop())
        code = f"from benchmarks.store_results import helper_main; helper_main({to_r}, {from_w})"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": path},
                pass_fds=(to_r, from_w),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the run is not its
            )
        except BaseException:
            for fd in (to_w, from_r):
                os.close(fd)
            self._log.close()
            raise
        finally:
            os.close(to_r)
            os.close(from_w)
        self._out = Connection(to_w, readable=False)
        self._in = Connection(from_r, writable=False)
        self._seq = 0
        self.send("setup", config)

    def output(self, last: int = 30) -> str:
        self._log.flush()
        self._log.seek(0)
        lines = [ln.rstrip() for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        return "\n".join(lines[-last:]) or "(no output)"

    def send(self, cmd: str, *args: Any) -> None:
        """Send a request (its answers are read with :meth:`recv`)."""
        self._seq += 1
        self._out.send((self._seq, cmd, args))

    def go(self) -> None:
        """The second message of a ``pipe_wait`` request."""
        self._out.send((self._seq, "go", ()))

    def recv(self, expect: str = "ok", timeout: float = HELPER_TIMEOUT) -> Any:
        """The next answer to the current request, of kind ``expect`` ("ready" or "ok")."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not self._in.poll(left):
                    raise RuntimeError(
                        f"the {self.name} helper did not answer in {timeout:.0f} s; its output:\n"
                        f"{self.output()}"
                    )
                seq, kind, value = self._in.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(
                    f"the {self.name} helper is gone ({exc!r}, exit code {self.proc.poll()}); its "
                    f"output:\n{self.output()}"
                ) from None
            if seq != self._seq:
                continue  # the late answer of an earlier request that failed
            if kind == "err":
                raise RuntimeError(f"in the {self.name} helper: {value}")
            if kind != expect:
                raise RuntimeError(f"the {self.name} helper answered {kind!r}, expected {expect!r}")
            return value

    def call(self, cmd: str, *args: Any, timeout: float = HELPER_TIMEOUT) -> Any:
        self.send(cmd, *args)
        return self.recv("ok", timeout)

    def stop(self) -> None:
        """Close its pipe (it exits at the end of its input); SIGKILL its group if it does not."""
        self._out.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._in.close()
        self._log.close()


class _Side:
    """B's side: what the helper does for each request (``do_<cmd>``)."""

    def __init__(self, inbox: Connection) -> None:
        self.inbox = inbox
        self.stores: dict[str, Any] = {}
        self.apps: dict[str, Any] = {}

    def do_setup(self, reply: Callable[[str], None], config: dict[str, Any]) -> int:
        import asyncbridge as ab

        for kind, url in config.get("stores", {}).items():
            if kind == "redis":
                importlib.import_module("asyncbridge.contrib.redis_store")
            self.stores[kind] = ab.ResultStore(url)
        for key, (url, keep_engine, wal) in config.get("celery", {}).items():
            self.apps[key] = celery_app(key, url, keep_engine, wal)
        return os.getpid()

    def do_ab_get(self, reply: Callable[[str], None], kind: str, ident: str) -> float:
        import asyncbridge as ab

        store = self.stores[kind]
        t0 = perf_counter()
        value: Any = ab.Result(ident, store=store).get(timeout=GET_TIMEOUT)
        dt = perf_counter() - t0
        check(value)
        return dt

    def do_celery_get(self, reply: Callable[[str], None], key: str, ident: str) -> float:
        from celery.result import AsyncResult

        app = self.apps[key]
        t0 = perf_counter()
        value = AsyncResult(ident, app=app).get(timeout=GET_TIMEOUT)
        dt = perf_counter() - t0
        check(value)
        return dt

    def do_celery_meta(self, reply: Callable[[str], None], key: str, ident: str) -> float:
        backend = self.apps[key].backend
        t0 = perf_counter()
        meta = backend.get_task_meta(ident)
        dt = perf_counter() - t0
        if meta.get("status") != "SUCCESS":
            raise RuntimeError(f"get_task_meta({ident!r}) read {meta!r}, not a SUCCESS")
        check(meta.get("result"))
        return dt

    def do_ab_wait(self, reply: Callable[[str], None], kind: str, ident: str) -> float:
        import asyncbridge as ab

        h: ab.Result[Any] = ab.Result(ident, store=self.stores[kind])
        if h.done():
            raise RuntimeError(f"the stored result {ident} ended before the wait began: {h!r}")
        reply("ready")
        value = h.get(timeout=GET_TIMEOUT)
        woke = time.monotonic()
        check(value)
        return woke

    def do_celery_wait(self, reply: Callable[[str], None], key: str, ident: str) -> float:
        from celery.result import AsyncResult

        r = AsyncResult(ident, app=self.apps[key])
        reply("ready")
        value = r.get(timeout=GET_TIMEOUT)
        woke = time.monotonic()
        check(value)
        return woke

    def do_pipe_wait(self, reply: Callable[[str], None]) -> float:
        reply("ready")
        self.inbox.recv()  # the "go"
        return time.monotonic()

    def do_idle(
        self, reply: Callable[[str], None], kind: str, idents: list[str], span: float
    ) -> tuple[float, float]:
        import asyncbridge as ab

        handles: list[ab.Result[Any]] = [ab.Result(ident, store=self.stores[kind]) for ident in idents]
        time.sleep(IDLE_SETTLE)  # the watcher's first reads of them are not the idle cost
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        done, _ = cf.wait(handles, timeout=span)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        if done:
            raise RuntimeError(f"{len(done)} of the results waited on ended during the idle span")
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu, w1 - w0

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def check(value: Any) -> None:
    if value != VALUE:
        raise RuntimeError(f"read {value!r}, not the value stored")


def helper_main(in_fd: int, out_fd: int) -> None:
    """The helper process: answer requests until the input pipe closes."""
    inbox = Connection(in_fd, writable=False)
    outbox = Connection(out_fd, readable=False)
    side = _Side(inbox)
    while True:
        try:
            seq, cmd, args = inbox.recv()
        except EOFError:
            break

        def reply(kind: str, value: Any = None, seq: int = seq) -> None:
            outbox.send((seq, kind, value))

        try:
            value = getattr(side, f"do_{cmd}")(reply, *args)
        except Exception:
            reply("err", traceback.format_exc(limit=6))
        else:
            reply("ok", value)
    side.close()


def celery_app(key: str, url: str, keep_engine: bool, wal: bool = False) -> Any:
    """A Celery app with ``url`` as its result backend (no broker is used). ``keep_engine``: a
    database backend keeps its engine and sessionmaker, as it does in a prefork worker's child.
    ``wal``: its SQLite connections use asyncbridge's settings (WAL, ``synchronous=NORMAL``)."""
    from celery import Celery

    app = Celery(f"abbench-store-{key}", backend=url, set_as_current=False)
    if wal:
        app.conf.database_engine_callback = wal_engine
    if keep_engine:
        app.backend.session_manager.forked = True  # what Celery's after-fork hook sets
    return app


def wal_engine(engine: Any) -> None:
    """Celery's ``database_engine_callback``: every SQLite connection of ``engine`` in WAL mode with
    ``synchronous=NORMAL`` (no fsync per commit), as the asyncbridge store's."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(engine, "connect", on_connect)


# -- what is available ----------------------------------------------------------------------------


def redis_unavailable() -> str:
    if not have("redis"):
        return "the redis client is not installed (pip install redis)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return ""


def celery_unavailable() -> str:
    return "" if have("celery") else "celery is not installed (pip install asyncbridge[celery])"


def sqlalchemy_unavailable() -> str:
    return celery_unavailable() or (
        "" if have("sqlalchemy") else "sqlalchemy is not installed (Celery's database backend needs it)"
    )


def ab_redis_unavailable() -> str:
    """Why asyncbridge's Redis store cannot be used here, or "" (importing it registers redis://)."""
    reason = redis_unavailable()
    if reason:
        return reason
    try:
        importlib.import_module("asyncbridge.contrib.redis_store")
    except Exception as exc:
        return f"asyncbridge's Redis store cannot be imported: {_error_text(exc)}"
    return ""


# -- the groups -------------------------------------------------------------------------------------


def _groups(cfg: Config, blocks: dict[str, Block], skips: dict[str, str]) -> list[Group]:
    sizes = cfg.pick(SIZES)

    def cand(name: str, role: Role, note: str = "") -> Candidate:
        return Candidate(name, blocks.get(name), role, note, skip=skips.get(name, ""))

    rt_ops, rt_rounds = sizes["rt"]
    wake_ops, wake_rounds = sizes["wake"]
    idle_ops, idle_rounds = sizes["idle"]
    budget = cfg.pick(BLOCK_BUDGET)
    cut = f"a block stops after {budget:g} s (with {MIN_SAMPLES} samples at least)"
    rt_note = f"A's write + B's read, each timed in its own process (not the pipe between them); {cut}"
    wake_note = (
        f"time.monotonic() (CLOCK_MONOTONIC, system-wide) in A and B; A waits {SETTLE * 1e3:.0f} ms "
        f"before the store call; {cut}"
    )
    return [
        Group(
            title="round trip on SQLite: write a final result, read it by id in another process",
            kind="latency",
            floor=RT_CELERY_DB,
            candidates=[
                cand(RT_CELERY_DB, "floor", "Celery's SQLAlchemy backend, engine kept (a worker child's)"),
                cand(RT_AB_SQLITE, "asyncbridge", "one write (a handle that has its value)"),
                cand(RT_CELERY_DB_PLAIN, "peer", "as a plain process runs it: an engine per call"),
                cand(RT_CELERY_DB_WAL, "peer", "engine kept; WAL, synchronous=NORMAL, as asyncbridge's"),
            ],
            ops=rt_ops,
            rounds=rt_rounds,
            note=rt_note,
        ),
        Group(
            title="round trip on Redis: write a final result, read it by id in another process",
            kind="latency",
            floor=RT_CELERY_REDIS,
            candidates=[
                cand(RT_CELERY_REDIS, "floor", "Celery's Redis backend"),
                cand(RT_AB_REDIS, "asyncbridge", "one write (a handle that has its value)"),
                cand(RT_CELERY_REDIS_META, "peer", "one GET, no pub/sub subscription"),
            ],
            ops=rt_ops,
            rounds=rt_rounds,
            note=f"{rt_note}; one redis-server on loopback",
        ),
        Group(
            title="wake-up across processes on SQLite: store call in A until get() returns in B",
            kind="latency",
            floor=WAKE_PIPE,
            candidates=[
                cand(WAKE_PIPE, "floor", "the least a wake-up across processes costs"),
                cand(WAKE_AB_SQLITE, "asyncbridge", "datagram wake-up of B's store watcher"),
            ],
            ops=wake_ops,
            rounds=wake_rounds,
            note=wake_note,
        ),
        Group(
            title="wake-up across processes on Redis: store call in A until get() returns in B",
            kind="latency",
            floor=WAKE_CELERY_REDIS,
            candidates=[
                cand(WAKE_CELERY_REDIS, "floor", "Celery's Redis backend: pub/sub"),
                cand(WAKE_AB_REDIS, "asyncbridge"),
            ],
            ops=wake_ops,
            rounds=wake_rounds,
            note=wake_note,
        ),
        Group(
            title=f"idle waiter: CPU time per second of a process following {IDLE_WAITERS} pending results",
            kind="throughput",
            floor="",
            candidates=[
                cand(IDLE_AB, "asyncbridge", "a helper of its own; getrusage(RUSAGE_SELF), every thread"),
            ],
            ops=idle_ops,
            rounds=idle_rounds,
            note=(
                f"one sample per block: CPU seconds per second over {idle_ops * IDLE_OP:.0f} s "
                f"({idle_ops} ops x {IDLE_OP} s) in which nothing is written; 10 ms = 1% of a CPU"
            ),
        ),
    ]


ALL = [c.name for g in _groups(QUICK, {}, {}) for c in g.candidates]


def _skips() -> dict[str, str]:
    """Why each candidate that cannot run here is skipped."""
    out: dict[str, str] = {}
    db, redis, celery, ab_redis = sqlalchemy_unavailable(), redis_unavailable(), celery_unavailable(), ""
    if not redis:
        ab_redis = ab_redis_unavailable()
    for name in (RT_CELERY_DB, RT_CELERY_DB_PLAIN, RT_CELERY_DB_WAL):
        out[name] = db
    for name in (RT_CELERY_REDIS, RT_CELERY_REDIS_META, WAKE_CELERY_REDIS):
        out[name] = redis or celery
    for name in (RT_AB_REDIS, WAKE_AB_REDIS):
        out[name] = redis or ab_redis
    return {k: v for k, v in out.items() if v}


class _Setup:
    """What one run of the family starts in A: stores, Celery apps, the server and the helpers."""

    def __init__(self, stack: ExitStack, skips: dict[str, str]) -> None:
        import asyncbridge as ab

        tmp = Path(tempfile.mkdtemp(prefix="abbench-store-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        sqlite_url = f"sqlite:///{tmp / 'ab.db'}"
        stores = {"sqlite": sqlite_url}
        celery: dict[str, tuple[str, bool, bool]] = {}  # key: (URL, keep the engine, WAL)
        if RT_CELERY_DB not in skips:
            db_url = f"db+sqlite:///{tmp / 'celery.db'}"
            celery[CELERY_DB] = (db_url, True, False)
            celery[CELERY_DB_PLAIN] = (db_url, False, False)
            # WAL is a setting of the file: this one has a file of its own
            celery[CELERY_DB_WAL] = (f"db+sqlite:///{tmp / 'celery-wal.db'}", True, True)
        need_redis = any(n not in skips for n in (RT_CELERY_REDIS, RT_AB_REDIS))
        if need_redis:
            from ._servers import free_port, start_redis

            port = free_port()
            server = start_redis(port, ROOT)
            stack.callback(server.stop)
            if RT_CELERY_REDIS not in skips:
                celery[CELERY_REDIS] = (f"redis://127.0.0.1:{port}/0", False, False)
            if RT_AB_REDIS not in skips:
                stores["redis"] = f"redis://127.0.0.1:{port}/1?key=bench"
        # The wake-up directory of the SQLite store outlives its processes (one per database path):
        # removed once the stores below are closed and the helpers gone (the stack unwinds LIFO).
        wake_dirs: list[str] = []
        stack.callback(_rmdirs, wake_dirs)
        self.stores: dict[str, ab.ResultStore] = {}
        for kind, url in stores.items():
            store = self.stores[kind] = ab.ResultStore(url)  # A's: the SQLite key file is made here
            stack.callback(store.close)
        wake_dirs.append(getattr(self.stores["sqlite"]._backend, "wake_dir", ""))
        self.apps = {key: celery_app(key, url, keep, wal) for key, (url, keep, wal) in celery.items()}
        helpers = []
        for name, config in (
            ("store-reader", {"stores": stores, "celery": celery}),
            ("store-idle", {"stores": {"sqlite": sqlite_url}}),
        ):
            helper = Helper(name, config, tmp)
            stack.callback(helper.stop)
            helpers.append(helper)
        for helper in helpers:  # started together; each answers once its imports are done
            helper.recv()
        self.reader, self.idle = helpers


def _rmdirs(paths: list[str]) -> None:
    for path in paths:
        if path:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _blocks(s: _Setup, budget: float) -> dict[str, Block]:
    import asyncbridge as ab

    reader = s.reader

    def enough(i: int, deadline: float) -> bool:
        """Sample ``i`` is in: is the block over its time budget (with enough samples)?"""
        return i + 1 >= MIN_SAMPLES and perf_counter() > deadline

    def ab_write(kind: str) -> Callable[[], str]:
        store = s.stores[kind]

        def write() -> str:
            h: ab.Result[Any] = ab.Result()
            h.set_result(VALUE)
            store.track(h)
            return h.id

        return write

    def celery_write(key: str) -> Callable[[], str]:
        backend = s.apps[key].backend

        def write() -> str:
            ident = str(uuid.uuid4())
            backend.store_result(ident, VALUE, "SUCCESS")
            return ident

        return write

    def round_trip(write: Callable[[], str], cmd: str, arg: str) -> Block:
        def run(n: int) -> list[float]:
            out: list[float] = []
            deadline = perf_counter() + budget
            for i in range(n):
                t0 = perf_counter()
                ident = write()
                wrote = perf_counter() - t0
                out.append(wrote + reader.call(cmd, arg, ident))
                if enough(i, deadline):
                    break
            return out

        return run

    def ab_pending(kind: str) -> Callable[[], tuple[str, Callable[[], object]]]:
        store = s.stores[kind]

        def make() -> tuple[str, Callable[[], object]]:
            h: ab.Result[Any] = ab.Result()
            store.track(h)  # PENDING, stored before track() returns
            return h.id, lambda: h.set_result(VALUE)

        return make

    def celery_pending(key: str) -> Callable[[], tuple[str, Callable[[], object]]]:
        backend = s.apps[key].backend

        def make() -> tuple[str, Callable[[], object]]:
            ident = str(uuid.uuid4())
            return ident, lambda: backend.store_result(ident, VALUE, "SUCCESS")

        return make

    def wake(make: Callable[[], tuple[str, Callable[[], object]]], cmd: str, arg: str) -> Block:
        def run(n: int) -> list[float]:
            out: list[float] = []
            deadline = perf_counter() + budget
            for i in range(n):
                ident, finish = make()
                reader.send(cmd, arg, ident)
                reader.recv("ready")
                time.sleep(SETTLE)
                t0 = time.monotonic()
                finish()
                out.append(reader.recv("ok", GET_TIMEOUT + HELPER_TIMEOUT) - t0)
                if enough(i, deadline):
                    break
            return out

        return run

    def wake_pipe(n: int) -> list[float]:
        out: list[float] = []
        deadline = perf_counter() + budget
        for i in range(n):
            reader.send("pipe_wait")
            reader.recv("ready")
            time.sleep(SETTLE)
            t0 = time.monotonic()
            reader.go()
            out.append(reader.recv() - t0)
            if enough(i, deadline):
                break
        return out

    def idle(n: int) -> list[float]:
        store = s.stores["sqlite"]
        handles: list[ab.Result[Any]] = [ab.Result() for _ in range(IDLE_WAITERS)]
        for h in handles:
            store.track(h)
        try:
            span = n * IDLE_OP
            cpu, wall = s.idle.call(
                "idle", "sqlite", [h.id for h in handles], span, timeout=span + HELPER_TIMEOUT
            )
        finally:
            for h in handles:  # the helper's watcher stops following them
                h.set_result(VALUE)
        return [cpu / wall]

    blocks: dict[str, Block] = {
        RT_AB_SQLITE: round_trip(ab_write("sqlite"), "ab_get", "sqlite"),
        WAKE_PIPE: wake_pipe,
        WAKE_AB_SQLITE: wake(ab_pending("sqlite"), "ab_wait", "sqlite"),
        IDLE_AB: idle,
    }
    if CELERY_DB in s.apps:
        blocks[RT_CELERY_DB] = round_trip(celery_write(CELERY_DB), "celery_get", CELERY_DB)
        blocks[RT_CELERY_DB_PLAIN] = round_trip(celery_write(CELERY_DB_PLAIN), "celery_get", CELERY_DB_PLAIN)
        blocks[RT_CELERY_DB_WAL] = round_trip(celery_write(CELERY_DB_WAL), "celery_get", CELERY_DB_WAL)
    if CELERY_REDIS in s.apps:
        blocks[RT_CELERY_REDIS] = round_trip(celery_write(CELERY_REDIS), "celery_get", CELERY_REDIS)
        blocks[RT_CELERY_REDIS_META] = round_trip(celery_write(CELERY_REDIS), "celery_meta", CELERY_REDIS)
        blocks[WAKE_CELERY_REDIS] = wake(celery_pending(CELERY_REDIS), "celery_wait", CELERY_REDIS)
    if "redis" in s.stores:
        blocks[RT_AB_REDIS] = round_trip(ab_write("redis"), "ab_get", "redis")
        blocks[WAKE_AB_REDIS] = wake(ab_pending("redis"), "ab_wait", "redis")
    return blocks


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    skips = _skips()
    try:
        setup = _Setup(stack, skips)
    except Exception as exc:  # what started is stopped by ``stack``; the other families go on
        reason = _error_text(exc)

        def fail(n: int) -> list[float]:
            raise RuntimeError(f"the store family's processes did not start: {reason}")

        return _groups(cfg, {name: fail for name in ALL if name not in skips}, skips)
    return _groups(cfg, _blocks(setup, cfg.pick(BLOCK_BUDGET)), skips)


# -- the summary ------------------------------------------------------------------------------------


def summary(results: list[GroupResult]) -> Table | None:
    """The goals, one row per asyncbridge candidate."""
    t = Table(title="store: the goals", title_justify="left")
    for col in ("asyncbridge", "median", "p90", "against", "goal"):
        t.add_column(col, justify="right" if col in ("median", "p90") else "left")
    rows = 0
    for r in results:
        by_name = {c.name: c for c in r.results}
        summaries = {s["name"]: s for s in r.summaries()}
        for c in r.results:
            if c.role != "asyncbridge":
                continue
            s = summaries[c.name]
            median = c.median
            if median is None:
                t.add_row(escape(c.name), "", "", "", escape(f"not measured: {c.status} {c.reason}".strip()))
                rows += 1
                continue
            p90 = s["p90"]
            against, goal = "", ""
            if c.name in (RT_AB_SQLITE, RT_AB_REDIS):
                # The goal is judged against the floor (Celery's equivalent call); every other
                # Celery way that is as fast or faster is named beside it.
                celery = [o for o in r.results if o.role != "asyncbridge" and o.median]
                ratios = {o.name: median / o.median for o in celery if o.median}
                against = ", ".join(f"{x:.2f}x of {escape(n)}" for n, x in ratios.items())
                floor = ratios.get(r.group.floor)
                goal = _goal(
                    floor is not None and floor < 1.0,
                    f"faster than the floor, {escape(r.group.floor)}",
                    floor is not None,
                )
                slower = [
                    f"{escape(n)} ({x:.2f}x)" for n, x in ratios.items() if x >= 1.0 and n != r.group.floor
                ]
                if slower and floor is not None:
                    goal += f"; not faster than {', '.join(slower)}"
            elif c.name == WAKE_AB_SQLITE:
                floor = by_name[WAKE_PIPE].median
                against = f"{median / floor:.1f}x of the pipe" if floor else ""
                goal = _goal(median <= WAKE_SQLITE_GOAL, f"median within {WAKE_SQLITE_GOAL * 1e3:.0f} ms")
            elif c.name == WAKE_AB_REDIS:
                floor = by_name[WAKE_CELERY_REDIS].median
                against = f"{median / floor:.2f}x of Celery's" if floor else ""
                goal = _goal(
                    floor is not None and median <= WAKE_REDIS_GOAL * floor,
                    f"within {WAKE_REDIS_GOAL}x of Celery's AsyncResult.get()",
                    floor is not None,
                )
            elif c.name == IDLE_AB:
                against = f"{median:.3%} of one CPU (p90 {p90:.3%})"
                goal = _goal(median < IDLE_GOAL, f"under {IDLE_GOAL:.0%} of one CPU")
            t.add_row(escape(c.name), fmt(median, "s"), fmt(p90, "s"), against, goal)
            rows += 1
    return t if rows else None


def _goal(met: bool, text: str, measurable: bool = True) -> str:
    if not measurable:
        return f"not judged (no Celery figure): {text}"
    return f"{'met' if met else '[red]missed[/red]'}: {text}"


FAMILY = Family(
    "store",
    "The result store",
    build,
    summary,
    estimate=Estimate(groups=5, seconds={"quick": 11, "default": 23, "full": 65}),
)
