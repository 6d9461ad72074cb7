"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu's filesystem ``Channel._put`` creates the message file under its final ``*.msg`` name and
then writes it, while ``_get`` lists the folder, moves the file and reads it without a lock: a
worker polling at that moment reads an empty file, and its consumer dies of a JSONDecodeError
("Unrecoverable error"), leaving the batch unscored. Seen under load in the embedded tests
(tests/model_store/test_promotion.py, tests/scheduler/test_inbox.py). Here the message is written
to a hidden temporary name, which ``_get`` never matches, and renamed into place: a rename in
one folder is atomic, so a reader sees the whole message or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as file:
            file.write(dumps(payload).encode())
        os.replace(temporary, final)


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        """No host: the broker is a folder. kombu's virtual-transport default ('localhost')
        made every connection info (Celery's start-up, each producer pool) log "No hostname
        was supplied. Reverting to default 'localhost'", on `digits up`'s console too."""
        return {"port": self.default_port}
