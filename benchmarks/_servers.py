"""Real servers and workers started for a run: a ``redis-server`` on a free loopback port and a
prefork ``celery worker``. Shared by the Celery benchmark family and the test suite's fixtures
(``tests/conftest.py`` imports it: pytest puts the repository root on ``sys.path``).

Each one runs in its own session (a Ctrl-C in the run is not theirs) and is stopped with its whole
process group, so a prefork worker's children go with it; its output is drained by a thread, so it
never blocks on a full pipe, and its last lines are kept for error messages.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: The ready line of ``redis-server``.
REDIS_READY = "Ready to accept connections"


class Process:
    """A server or worker whose output a daemon thread reads, watching for ``ready_text``."""

    def __init__(self, argv: list[str], ready_text: str, env: dict[str, str], name: str, cwd: Path) -> None:
        self.name = name
        self.stopped = False  # stop() was called: an exit from now on is expected
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._text = ready_text
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        # The asyncbridge- prefix: the test suite's thread-leak guard counts it as long-lived.
        self._reader = threading.Thread(target=self._read, name=f"asyncbridge-run-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._text and self._text in line:
                self._ready.set()

    def output(self, last: int = 40) -> str:
        """Its last ``last`` non-blank lines of output, for an error message."""
        lines = [line.rstrip() for line in self.lines if line.strip()][-last:]
        return "\n".join(lines) or "(no output)"

    def wait_ready(self, timeout: float = 60) -> None:
        """Return once its ready line was printed; if it exits or ``timeout`` passes first, stop it and
        raise ``RuntimeError`` with its last output."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} ({self.proc.args!r}) did not get ready:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM to its whole process group, SIGKILL after 20 s. Its stdout is closed only once the
        reader has seen its end: a child that outlived its parent would otherwise keep the pipe open
        and the close would wait on the reader for ever."""
        self.stopped = True
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        self._signal_group(signal.SIGKILL)  # whatever of the group is left
        self._reader.join(10)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: the group is the process's own
        except ProcessLookupError:
            pass


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, cwd: Path) -> Process:
    """A ``redis-server`` on 127.0.0.1:``port`` that keeps nothing on disk, once it is ready.

    Raises:
        RuntimeError: redis-server is not installed, or did not get ready.
    """
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = Process(argv, REDIS_READY, dict(os.environ), "redis", cwd)
    redis.wait_ready()
    return redis


def celery_worker_argv(app_module: str, concurrency: int, loglevel: str) -> list[str]:
    """The command line of a prefork ``celery worker`` of ``app_module``, without the cluster chatter
    (heartbeats, mingle, gossip) that a one-worker run does not need."""
    return [
        *(sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool=prefork"),
        *(f"--concurrency={concurrency}", f"--loglevel={loglevel}"),
        *("--without-heartbeat", "--without-mingle", "--without-gossip"),
    ]
