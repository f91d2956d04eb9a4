"""What the forkserver preloads for asyncbridge's process pools (see ``_process._pick_start_method``).

Workers forked from the forkserver inherit what it imported: the library itself (so a worker starts
without importing it again) and :func:`~asyncbridge._process_worker.guard_main_import`, which lets a
worker report a failed import of the main module to the caller instead of dying with it on stderr.
Nothing else imports this module: that hook belongs in the forkserver process alone.
"""

from __future__ import annotations

from . import _process  # noqa: F401  # imported here once, inherited by every worker
from ._process_worker import guard_main_import

guard_main_import()
