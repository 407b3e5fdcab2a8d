"""The embedded broker: kombu's filesystem transport, made safe for several processes.

kombu's own ``filesystem`` transport (kombu 5.x) creates a message file and then writes
it, and a consumer takes a file by moving it without looking at the writer's lock: a
consumer polling at the wrong moment reads an empty or half-written file, and the worker
dies on a ``JSONDecodeError`` (kombu#1551). With ``store_processed`` off it also moves
files to the system temp folder, which may be another filesystem — a copy, not an
atomic rename, so two workers could both take one message.

Here a message is written under a name no consumer matches and renamed into place when
complete, and a consumer takes it by an atomic rename into ``taken/`` on the same
filesystem (the loser of a race gets ``FileNotFoundError`` and moves on), reads it and
deletes it. Everything else — exchanges, bindings, fan-out — is kombu's.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    # kombu's filesystem Channel takes (payload, **kwargs), unlike its own base's stub.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        # A leading dot and a suffix: ``_get`` matches ``<id>.<queue>.msg`` only.
        partial = os.path.join(folder, f".{name}.part")
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(partial, os.path.join(folder, name))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        wanted = f"{queue}.msg"
        taken = self.processed_folder
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            mine = os.path.join(taken, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), mine)
            except FileNotFoundError:
                continue  # another consumer took it first
            try:
                with open(mine, "rb") as f:
                    payload = f.read()
            finally:
                os.remove(mine)
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
