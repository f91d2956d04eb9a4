"""A Celery broker on the file system that never hands out a half-written message.

kombu's ``filesystem://`` transport creates each message file and only then writes it, while a
consumer moves and reads any file it lists, without a lock: a worker that lists the queue in
between reads an empty message and dies on a ``JSONDecodeError`` (kombu 5.x; the worker's pool is
lost with it). This transport writes each message under a name no consumer matches, then renames it
into place (``os.replace``, atomic within a directory), so a listed message is always whole. It is
kombu's transport otherwise, with the same URL and options; use it on both sides, clients and
workers, by naming it in the app's configuration::

    app.conf.update(
        broker_url="filesystem://",
        broker_transport="asyncbridge.contrib.celery_fs:Transport",
        broker_transport_options={"data_folder_in": ..., "data_folder_out": ..., ...},
    )
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

__all__ = ["Channel", "Transport"]


class Channel(filesystem.Channel):
    """kombu's file-system channel, with messages published atomically."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name kombu's _get() looks for: "<ms>_<uuid>.<queue>.msg", sorted by time.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Until the rename, a name with no "." before the queue's: _get() skips it.
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}")
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
