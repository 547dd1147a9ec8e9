"""A GCS emulator (``gcp-storage-emulator``) on 127.0.0.1 for the ``gs://`` (gcsfs) tests.

Two modes:

* ``GCSEmulator()`` -- *plain*: the emulator as shipped; it ignores ``ifGenerationMatch`` and
  every other precondition, so a stale conditional write succeeds. This is what the backend's
  "does this server honour conditional writes?" probe must detect.
* ``GCSEmulator(preconditions=True)`` -- behaves like GCS for writes: uploads (simple/media,
  multipart, resumable, XML ``PUT``, and copy/rewrite/compose destinations) and deletes honour
  ``ifGenerationMatch`` / ``ifGenerationNotMatch`` (query parameters, or the XML API's
  ``x-goog-if-generation-match`` header): ``0`` means "must not exist", ``N`` means "the live
  generation is N"; otherwise HTTP 412 ``conditionNotMet``. Check and store happen under one lock.

Both modes (harness fixes, not GCS deviations):

* every request is served under one lock (the emulator's in-memory store is plain dicts and
  not thread-safe; ``ThreadingHTTPServer`` only overlaps accept/parse);
* media downloads (``alt=media``, ``/download/...``, XML ``GET``) carry ``x-goog-generation`` /
  ``x-goog-metageneration`` of the very bytes returned, as GCS does (the emulator sends none);
* ``DELETE`` on a resumable session URI cancels it (GCS answers 499; the emulator has no route, so
  ``GCSFile.discard()`` got 501, retried for ~30 s, and the half-written file was later committed);
* generations are strictly increasing per server (the emulator uses ``time.time_ns()`` taken
  when the upload *started*, which can go backwards for a resumable upload).

Optional ``require_token="..."``: requests without ``Authorization: Bearer <token>`` get 401
``Invalid Credentials`` like GCS, to test the bad-credentials path (the emulator itself accepts
anything).

gcsfs trap: ``import gcsfs`` picks ``ExtendedGcsFileSystem`` unless
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` is set *before the import*; that class asks the
Storage Control gRPC API for the bucket layout, which an emulator does not serve (about 60 s
of retries per call). This module sets the variable on import and :func:`check_gcsfs_env`
fails loudly if gcsfs was imported before with the extended class.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from gcp_storage_emulator.handlers import buckets as _buckets  # noqa: E402
from gcp_storage_emulator.server import RequestHandler as _EmuRequestHandler  # noqa: E402
from gcp_storage_emulator.server import Router as _EmuRouter  # noqa: E402
from gcp_storage_emulator.storage import Storage as _EmuStorage  # noqa: E402

PROJECT = "test-project"
_PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."

# Per request-thread state: the request's preconditions, and the object a download returned.
_local = threading.local()


class PreconditionFailed(Exception):
    """Raised inside the emulator when a precondition does not hold; answered with HTTP 412."""


def check_gcsfs_env() -> None:
    """Raise if gcsfs is (or will be) the Extended class that probes gRPC for every bucket."""
    if os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "true").lower() in ("true", "1"):
        raise RuntimeError("set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported")
    mod = sys.modules.get("gcsfs")
    if mod is not None and mod.GCSFileSystem.__name__ == "ExtendedGcsFileSystem":
        raise RuntimeError(
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set; "
            "import tests.servers.gcs (or set the variable) before anything imports gcsfs"
        )


class _SuppressPreconditionTraceback(logging.Filter):
    """The emulator's Router logs every handler exception as an error; ours are expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_local, "precondition_failed", False)


class _SuppressNotFoundNoise(logging.Filter):
    """Storage.get_file logs every 404 ("Resource not found:") as an error; a 404 is an answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "get_file"


logging.getLogger("gcp_storage_emulator.server").addFilter(_SuppressPreconditionTraceback())
logging.getLogger("gcp_storage_emulator.storage").addFilter(_SuppressNotFoundNoise())


def _conditions(query: dict[str, list[str]], headers: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, header in (
        ("ifGenerationMatch", "x-goog-if-generation-match"),
        ("ifGenerationNotMatch", None),
    ):
        value = query.get(name, [None])[0]
        if value is None and header:
            value = headers.get(header)
        if value is not None:
            out[name] = int(value)
    return out


class _Storage(_EmuStorage):
    """The emulator's store plus preconditions, monotonic generations and download bookkeeping."""

    def __init__(self, emulator: GCSEmulator) -> None:
        super().__init__(use_memory_fs=True)
        self._emulator = emulator
        self._last_generation = 0
        self._resumable_conditions: dict[str, dict[str, int]] = {}

    # ----- preconditions ------------------------------------------------------------------------
    def _check(self, bucket_name: str, file_name: str, conditions: dict[str, int] | None) -> None:
        if not conditions or not self._emulator.preconditions:
            return
        live = self.objects.get(bucket_name, {}).get(file_name)
        generation = int(live["generation"]) if live else 0  # 0: "does not exist", as GCS defines it
        ok = True
        if "ifGenerationMatch" in conditions:
            ok = ok and generation == conditions["ifGenerationMatch"]
        if "ifGenerationNotMatch" in conditions:
            ok = ok and generation != conditions["ifGenerationNotMatch"]
        if not ok:
            _local.precondition_failed = True
            raise PreconditionFailed(f"{bucket_name}/{file_name}: live generation {generation}, {conditions}")

    def create_resumable_upload(self, bucket_name: str, file_name: str, file_obj: dict) -> str:
        conditions = getattr(_local, "conditions", None)
        self._check(bucket_name, file_name, conditions)  # GCS checks when the session starts, too
        file_id = super().create_resumable_upload(bucket_name, file_name, file_obj)
        if conditions:
            self._resumable_conditions[file_id] = conditions
        return file_id

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):  # type: ignore[override]
        conditions = dict(self._resumable_conditions.get(file_id, {})) if file_id else {}
        conditions.update(getattr(_local, "conditions", None) or {})
        self._check(bucket_name, file_name, conditions)
        if file_id:
            self._resumable_conditions.pop(file_id, None)
            self.resumable.pop(file_id, None)  # the emulator never forgets finished sessions
        generation = max(int(file_obj["generation"]), self._last_generation + 1)
        self._last_generation = generation
        file_obj["generation"] = str(generation)
        file_obj["id"] = f"{bucket_name}/{file_name}/{generation}"
        if file_obj.get("mediaLink"):
            file_obj["mediaLink"] = re.sub(r"generation=\d+", f"generation={generation}", file_obj["mediaLink"])
        return super().create_file(bucket_name, file_name, content, file_obj, None)

    def delete_file(self, bucket_name, file_name):  # type: ignore[override]
        self._check(bucket_name, file_name, getattr(_local, "conditions", None))
        return super().delete_file(bucket_name, file_name)

    def cancel_resumable_upload(self, file_id: str) -> bool:
        """DELETE on a session URI (what gcsfs's ``GCSFile.discard()`` sends); the emulator has no route."""
        from gcp_storage_emulator.storage import RESUMABLE_DIR

        self._resumable_conditions.pop(file_id, None)
        if self.resumable.pop(file_id, None) is None:
            return False
        self._delete_file(RESUMABLE_DIR, self.safe_id(file_id))
        return True

    def get_file_obj(self, bucket_name, file_name):  # type: ignore[override]
        obj = super().get_file_obj(bucket_name, file_name)
        _local.last_obj = obj
        return obj


class _Handler(_EmuRequestHandler):
    server: _HTTPServer

    def _send_error_json(self, code: int, reason: str, message: str) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": code,
                    "message": message,
                    "errors": [{"domain": "global", "reason": reason, "message": message}],
                }
            }
        ).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        emulator = self.server.emulator
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        token = emulator.require_token
        if token and parsed.path != "/" and self.headers.get("Authorization") != f"Bearer {token}":
            self._send_error_json(401, "authError", "Invalid Credentials")
            return
        if method == "DELETE" and parsed.path.startswith("/upload/") and "upload_id" in query:
            with emulator.lock:
                found = self.server.emulator.storage.cancel_resumable_upload(query["upload_id"][0])
            # GCS answers a cancelled session with 499 (gcsfs treats 499 as success), an unknown one with 404
            self._send_error_json(
                499 if found else 404,
                "cancelled" if found else "notFound",
                "upload session cancelled" if found else "no such upload",
            )
            return
        _local.conditions = _conditions(query, self.headers)
        _local.precondition_failed = False
        _local.last_obj = None
        _local.download = method == "GET" and (
            query.get("alt", [""])[0] == "media"
            or parsed.path.startswith("/download/")
            or not parsed.path.startswith(("/storage/", "/b/", "/upload/", "/batch/"))
        )
        try:
            with emulator.lock:
                try:
                    _EmuRouter(self).handle(method)
                except PreconditionFailed:
                    self._send_error_json(412, "conditionNotMet", _PRECONDITION_MESSAGE)
        finally:
            _local.conditions = None
            _local.precondition_failed = False
            _local.download = False
            _local.last_obj = None

    def end_headers(self) -> None:
        obj = getattr(_local, "last_obj", None)
        if getattr(_local, "download", False) and obj is not None:
            self.send_header("x-goog-generation", str(obj["generation"]))
            self.send_header("x-goog-metageneration", str(obj.get("metageneration", "1")))
            self.send_header("x-goog-stored-content-length", str(obj.get("size", "")))
        super().end_headers()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: fsspec's concurrent pipe()/cat() of many files
    # overflows it and the kernel drops SYNs (1 s, 3 s, 7 s... client retransmits: minutes).
    request_queue_size = 1024
    emulator: GCSEmulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # gcsfs's info() races an object GET against a listing and drops the loser's connection.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class GCSEmulator:
    """gcp-storage-emulator in a thread of this process, in memory, on a free loopback port.

    Args:
        preconditions: honour ``ifGenerationMatch`` / ``ifGenerationNotMatch`` like GCS (see module doc).
        host: address to listen on.
        port: 0 picks a free port.
        require_token: if set, requests must carry ``Authorization: Bearer <require_token>``.
    """

    def __init__(
        self,
        *,
        preconditions: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        require_token: str | None = None,
    ) -> None:
        self.preconditions = preconditions
        self.host = host
        self.requested_port = port
        self.require_token = require_token
        self.lock = threading.RLock()
        self.storage = _Storage(self)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle ----------------------------------------------------------------------------
    def start(self) -> GCSEmulator:
        if self._httpd is not None:
            return self
        storage = self.storage

        def handler(*args: Any, **kwargs: Any) -> _Handler:
            return _Handler(storage, *args, **kwargs)

        httpd = _HTTPServer((self.host, self.requested_port), handler)
        httpd.emulator = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> GCSEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- addresses and options ----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the GCS emulator is not running")
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` -- for gcsfs ``endpoint_url`` or ``STORAGE_EMULATOR_HOST``."""
        return f"http://{self.host}:{self.port}"

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """``storage_options`` for ``gs://bucket/prefix`` through gcsfs."""
        check_gcsfs_env()
        options: dict[str, Any] = {"endpoint_url": self.endpoint, "project": PROJECT}
        if self.require_token:
            from google.oauth2.credentials import Credentials

            options["token"] = Credentials(token=self.require_token)
        else:
            options["token"] = "anon"
        options.update(extra)
        return options

    def bad_credentials_options(self, **extra: Any) -> dict[str, Any]:
        """Options with a token the server rejects (needs ``require_token``); 401 on every call."""
        from google.oauth2.credentials import Credentials

        if not self.require_token:
            raise RuntimeError("start the emulator with require_token=... to test bad credentials")
        return {"endpoint_url": self.endpoint, "project": PROJECT, "token": Credentials(token="wrong"), **extra}

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """``STORAGE_EMULATOR_HOST`` set to this server (for code that builds its own gcsfs)."""
        old = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = old

    def filesystem(self, **extra: Any) -> Any:
        """A fresh (uncached) ``gcsfs.GCSFileSystem`` on this server."""
        check_gcsfs_env()
        import gcsfs

        return gcsfs.GCSFileSystem(skip_instance_cache=True, **self.storage_options(**extra))

    # ----- buckets ------------------------------------------------------------------------------
    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name if ``name`` is None) and return its name."""
        name = name or f"ckpt-{secrets.token_hex(4)}"
        with self.lock:
            if not _buckets.create_bucket(name, self.storage):
                raise FileExistsError(f"bucket {name} exists")
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (missing is fine)."""
        st = self.storage
        with self.lock:
            if name not in st.buckets:
                return
            for file_id in [k for k, v in st.resumable.items() if v.get("bucket") == name]:
                st.resumable.pop(file_id, None)
            for obj_name in list(st.objects.get(name, {})):
                st._hard_delete_file(name, obj_name)
            st.delete_bucket(name)

    def list_buckets(self) -> list[str]:
        with self.lock:
            return sorted(self.storage.buckets)

    @contextlib.contextmanager
    def bucket(self, name: str | None = None) -> Iterator[str]:
        """A fresh bucket for one test, deleted afterwards."""
        name = self.create_bucket(name)
        try:
            yield name
        finally:
            self.delete_bucket(name)
