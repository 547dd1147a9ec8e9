"""A moto S3 server on 127.0.0.1 that honours S3's conditional-write atomicity.

Real S3 evaluates ``If-Match`` / ``If-None-Match`` and stores the object as one
atomic step. moto (5.2) checks the condition, then stores, with no lock between:
two threads holding the same ETag can both "win", and one manifest update is lost.
That is an emulator gap, not a property of S3, so tests close it here: conditional
PUTs are serialised inside the server. Unconditional PUTs (data files) are not.
"""

from __future__ import annotations

import threading
from typing import Any

_PATCHED = False
_LOCK = threading.RLock()


def make_conditional_puts_atomic() -> None:
    global _PATCHED
    if _PATCHED:
        return
    from moto.s3.responses import S3Response

    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with _LOCK:
                return original(self)
        return original(self)

    S3Response.put_object = put_object  # type: ignore[method-assign]
    _PATCHED = True


def start_server() -> tuple[Any, str]:
    """Start a ThreadedMotoServer on a free loopback port; returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    make_conditional_puts_atomic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"
