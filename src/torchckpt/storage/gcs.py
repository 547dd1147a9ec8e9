"""Google Cloud Storage (``gs://``, ``gcs://``, through gcsfs): generation compare-and-swap.

* Versions commit with ``MarkerLast``: data objects first, ``meta.json`` last.
* The manifest compare-and-swap is one GET (``alt=media``: content and the
  ``x-goog-generation`` of that very content) and a media upload with
  ``ifGenerationMatch=<generation>`` (``0``: create only). 412 means another
  writer won; the caller reads again.
* Construction checks the bucket with one request outside gcsfs's retry loop
  (which retries a rejected token or a refused connection for about 30 s): a
  missing bucket, rejected credentials (401/403) or an unreachable endpoint is
  one ``StorageError``.
* Data objects stream as resumable uploads (8 MiB chunks); a failed stream
  cancels its session (``Storage.discard``), so nothing is published.
* Emulators: with ``endpoint_url`` or ``STORAGE_EMULATOR_HOST`` and no ``token``,
  ``token="anon"``; and gcsfs's zonal-bucket probe (a gRPC call that waits 60 s on
  an emulator) is turned off unless ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import sys
from typing import IO, Any, ClassVar
from urllib.parse import quote

from ..errors import StorageError, TornReadError
from .base import describe
from .object_store import ObjectStore, Upload

#: Chunk size of resumable uploads (a multiple of 256 KiB).
BLOCK_SIZE = 8 << 20


def _sync(fs: Any, coro_fn: Any) -> Any:
    from fsspec.asyn import sync

    return sync(fs.loop, coro_fn)


class GCSStorage(ObjectStore):
    """A prefix in a GCS bucket."""

    kind: ClassVar[str] = "gcs"

    @classmethod
    def prepare_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        options = dict(options)
        emulator = options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            options.setdefault("token", "anon")  # else gcsfs looks for Google credentials and metadata servers
            if "gcsfs" not in sys.modules:  # read once, at import
                os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        return options

    @property
    def bucket(self) -> str:
        """The bucket holding the root."""
        return self.root.split("/", 1)[0]

    def _object(self, rel: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(self.path(rel))
        return bucket, key

    def server_identity(self) -> str:
        return str(self.fs._location)

    def check_container(self) -> None:
        import google.auth.exceptions

        fs = self.fs

        async def get_bucket() -> tuple[int, str]:
            await fs._set_session()
            url = fs._format_path("b/{}", [self.bucket])
            async with fs.session.get(url, headers=fs._get_headers(None), timeout=fs.requests_timeout) as r:
                return r.status, (await r.text())[:300]

        try:
            status, text = _sync(fs, get_bucket)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise StorageError(f"{self.root_url}: no usable Google credentials: {describe(exc)}") from exc
        except Exception as exc:
            raise StorageError(f"cannot reach {self.root_url}: {describe(exc)}") from exc
        if status == 404:
            raise StorageError(f"bucket {self.bucket!r} of {self.root_url} does not exist: create it first")
        if status in (401, 403):
            raise StorageError(
                f"{self.root_url}: the credentials were rejected ({status}): check the token / service account"
            )
        if status >= 400:
            raise StorageError(f"cannot use {self.root_url}: HTTP {status}: {' '.join(text.split())}")

    # ----- compare-and-swap ---------------------------------------------------------------------------------
    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        bucket, key = self._object(rel)

        async def get() -> tuple[bytes | None, str | None]:
            try:
                headers, data = await self.fs._call("GET", "b/{}/o/{}", bucket, key, alt="media")
            except FileNotFoundError:
                return None, None
            generation = headers.get("x-goog-generation")
            if not generation:  # GCS always sends it; an emulator may not: ask, then read that generation
                try:
                    meta = await self.fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
                    generation = str(meta["generation"])
                    headers, data = await self.fs._call(
                        "GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation
                    )
                except FileNotFoundError:
                    return None, None
            check_whole(self.url(rel), data, headers)
            return data, str(generation)

        with self.errors("reading", rel):
            return _sync(self.fs, get)

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        bucket, key = self._object(rel)
        fs = self.fs

        async def put() -> None:
            await fs._call(
                "POST",
                f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                uploadType="media",
                name=key,
                ifGenerationMatch=token or "0",
                data=data,
                headers={"Content-Type": "application/octet-stream"},  # not JSON: an emulator would parse it
                json_out=True,
            )

        try:
            _sync(fs, put)
        except FileExistsError:  # gcsfs: 412 conditionNotMet -> another writer won
            return False
        except Exception as exc:
            raise StorageError(f"writing {self.url(rel)} failed: {describe(exc)}") from exc
        finally:
            self.invalidate(posixpath.dirname(rel))
        return True

    # ----- data -----------------------------------------------------------------------------------------------
    def open_write(self, rel: str) -> IO[bytes]:
        """A resumable upload in ``BLOCK_SIZE`` chunks, finalised on close."""
        with self.errors("writing", rel):
            return Upload(self, rel, self.fs.open(self.path(rel), "wb", block_size=BLOCK_SIZE))  # type: ignore[return-value]


def check_whole(url: str, data: bytes, headers: Any) -> None:
    """Raise ``TornReadError`` when ``data`` differs from the stored length or MD5 the server announced."""
    if headers.get("content-encoding", "").lower() == "gzip":
        return  # transcoded: the stored length and hash describe the compressed bytes
    stored = headers.get("x-goog-stored-content-length")
    if stored is not None and int(stored) != len(data):
        raise TornReadError(f"{url}: read {len(data)} bytes, the object holds {stored}")
    for part in str(headers.get("x-goog-hash", "")).split(","):
        name, _, value = part.strip().partition("=")
        if name == "md5" and value:
            digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            if digest != value.strip():
                raise TornReadError(f"{url}: the bytes read do not match the object's MD5")
