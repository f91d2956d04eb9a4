"""What the Celery listener's poller reads of one pending task, on result backends that cannot push
(see :mod:`asyncbridge.contrib._celery_listener` for the schedule): a new state, or nothing.

A backend keeps only a task's latest state, so a read that finds the stored bytes it found before
is not a new report: the bytes are compared, and only changed ones are decoded and delivered. Two
equal reports in a row look the same, except on the file system, where a rewrite changes the
file's time stamp: there a report equal to the last one counts as new if it was written after a
*quiet* read, one of a file unchanged while read and older than :data:`RACY_NS` (time stamps are
coarse: a rewrite within that time of the one before may keep its time stamp, and is taken for the
same report; never is a report delivered twice).

On the file system a check is a ``stat()``: a file whose (mtime, size, inode) is that of a quiet
read holds the same bytes, and is not read. A task with no file yet is not even stat'ed while the
results directory is quiet and unchanged since the task was found missing (a new file changes the
directory's time stamp). Each file is still read in full every
:data:`~asyncbridge.contrib.celery.POLL_REREAD_INTERVAL` seconds, for file systems whose time stamps
or attribute caches hide a write.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.backends.base import KeyValueStoreBackend

#: A file or directory whose time stamp is this recent (ns) may change again without its time stamp
#: changing: its stat proves nothing yet.
RACY_NS = 100_000_000

Signature = tuple[int, int, int]  # a file's (mtime_ns, size, inode)


class Polled:
    """What the poller knows of one pending task (the listener thread's own)."""

    __slots__ = ("changed", "due", "path", "proof", "raw", "reread", "seen_dir", "sig", "trusted")

    def __init__(self, now: float) -> None:
        self.changed = now  # when its stored state last changed (or it was first watched)
        self.due = now  # when it is checked next
        self.raw: object = None  # the stored state last delivered, as stored (or a stand-in)
        # File system: when the file is read next whatever its stat says; its path; its signature at
        # the last read (None: no file then) and whether that read was quiet (then, while the
        # signature stays, so do the bytes); its signature at a quiet read of the bytes delivered; the
        # quiet directory it was missing from.
        self.reread = now
        self.path: bytes | None = None
        self.sig: Signature | None = None
        self.trusted = False
        self.proof: Signature | None = None
        self.seen_dir: tuple[int, int] | None = None


class Unreadable(Exception):
    """A whole stored state that cannot be decoded (its cause says why)."""


def directory(backend: Any) -> tuple[bool, tuple[int, int] | None]:
    """Whether the results directory of a file-system ``backend`` can be stat'ed, and its
    (mtime_ns, inode) if it is quiet (None if not: a file may have been created unseen, and tasks
    with no file yet must be stat'ed)."""
    try:
        st = os.stat(backend.path)
    except OSError:
        return False, None
    if time.time_ns() - st.st_mtime_ns < RACY_NS:
        return True, None
    return True, (st.st_mtime_ns, st.st_ino)


def read_file(
    backend: Any, task_id: str, p: Polled, now: float, quiet_dir: tuple[int, int] | None, reread: float
) -> dict[str, Any] | None:
    """One check of a task on the file-system ``backend``: its new state, or None. ``quiet_dir``:
    what :func:`directory` said this round; ``reread``: seconds to the next full read.

    Raises:
        Unreadable: its file, whole, holds what cannot be decoded.
        OSError: the file cannot be stat'ed or read.
    """
    full = now >= p.reread
    if not full and p.sig is None and p.seen_dir is not None and p.seen_dir == quiet_dir:
        return None  # no file then, and none created since
    if p.path is None:
        p.path = backend._filename(backend.get_key_for_task(task_id))
    if full:
        p.reread = now + reread
    try:
        before = os.stat(p.path)
    except FileNotFoundError:
        p.sig, p.trusted, p.seen_dir = None, False, quiet_dir
        return None
    sig = (before.st_mtime_ns, before.st_size, before.st_ino)
    if not full and p.trusted and sig == p.sig:
        return None  # unchanged since a quiet read
    try:
        with open(p.path, "rb") as f:
            raw = f.read()
            after = os.fstat(f.fileno())
    except FileNotFoundError:
        p.sig, p.trusted, p.seen_dir = None, False, None
        return None
    new_sig = (after.st_mtime_ns, after.st_size, after.st_ino)
    quiet = new_sig == sig and time.time_ns() - after.st_mtime_ns >= RACY_NS
    p.sig, p.trusted = new_sig, quiet
    if not raw:  # Celery's writer truncated the file and has not written yet: look again soon
        p.trusted = False
        return None
    if raw == p.raw:  # the same bytes: a new report only if a rewrite is proven
        rewritten = quiet and p.proof is not None and new_sig != p.proof
        if quiet:
            p.proof = new_sig
        if not rewritten:
            return None
    try:
        meta: dict[str, Any] = backend.decode_result(raw)
    except Exception as error:
        if quiet:  # a whole file, not one half written
            raise Unreadable from error
        p.trusted = False
        return None
    # Read while being written, these bytes may have been rewritten just before: whether they were
    # is unknown, so an equal report that follows is proven only from a later quiet read.
    p.raw, p.proof = raw, new_sig if quiet else None
    return meta


def read_store(backend: Any, task_id: str, p: Polled) -> dict[str, Any] | None:
    """One check of a task on another ``backend`` (a database, a cache): its new state, or None."""
    meta: dict[str, Any] | None = None
    if isinstance(backend, KeyValueStoreBackend):
        raw: object = backend.get(backend.get_key_for_task(task_id))
        if raw is None:
            return None
    else:
        meta = backend.get_task_meta(task_id, cache=False)
        raw = repr(meta)  # what it holds, comparable: a decoded exception is a new object each read
    if raw == p.raw:
        return None
    p.raw = raw
    return meta if meta is not None else backend.decode_result(raw)
