"""S3 and S3-compatible stores (``s3://``, through s3fs): conditional PUTs, multipart streams.

* Versions commit with ``MarkerLast``: data objects first, ``meta.json`` last.
* The manifest compare-and-swap is one GET (content and its ETag together) and a
  conditional PUT: ``IfMatch=<etag>``, or ``IfNoneMatch='*'`` when creating it.
  A 412/409 answer means another writer won; the caller reads again and retries.
* Data files stream through ``S3MultipartWriter`` (concurrent parts from a
  bounded buffer pool); large reads go into one preallocated buffer.
* Endpoints come from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` unless the
  storage options name one; network calls are bounded by default timeouts.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import IO, Any, ClassVar

from ..errors import StorageError
from ..hashing import checksum_bytes, verify_record
from . import s3_transfer
from .base import Storage, describe

#: Bounded network behaviour unless the user chose otherwise.
DEFAULT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
#: Files at least this large are fetched into one preallocated buffer.
BUFFERED_READ_MIN = 8 << 20


def is_precondition_failure(exc: BaseException) -> bool:
    """Whether a failed conditional write lost the race (412 / 409), rather than failed."""
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, FileExistsError) or any(
        s in text for s in ("pre-condition", "precondition", "conditionalrequestconflict", "412", "409")
    )


class S3Storage(Storage):
    """A prefix in an S3 bucket."""

    multi_writer_safe: ClassVar[bool] = True
    kind: ClassVar[str] = "s3"

    @classmethod
    def prepare_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        options = dict(options)
        client_kwargs = dict(options.get("client_kwargs") or {})
        endpoint = _env_endpoint()
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        config = dict(DEFAULT_CONFIG)
        config.update(options.get("config_kwargs") or {})
        options["config_kwargs"] = config
        return options

    @property
    def bucket(self) -> str:
        """The bucket holding the root."""
        return self.root.split("/", 1)[0]

    # ----- reachability -------------------------------------------------------------------------------
    def folders_are_implicit(self) -> bool:
        return True

    def create_root(self) -> None:
        """Nothing to create: a prefix exists once an object is under it."""

    def check_container(self) -> None:
        try:
            self.fs.ls(self.bucket, detail=False)
        except FileNotFoundError:
            raise StorageError(f"bucket {self.bucket!r} of {self.root_url} does not exist: create it first") from None

    # ----- reading ----------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.errors("reading", rel):  # one GET: by default s3fs first HEADs the object to plan ranged reads
            return bytes(self.fs.cat_file(self.path(rel), max_concurrency=1))

    def read_buffer(self, rel: str, size: int) -> bytearray:
        if size >= BUFFERED_READ_MIN:
            try:  # concurrent ranged GETs straight into one buffer (see s3_transfer.fetch)
                with self.errors("reading", rel):
                    return s3_transfer.fetch(self.fs, self.path(rel), size)
            except s3_transfer.SizeMismatch:
                pass  # the plain read returns the real length; the caller reports it
        return super().read_buffer(rel, size)

    def load_source(self, rel: str, expected: Mapping[str, Any] | None, *, verify: bool) -> str | IO[bytes]:
        size = int(expected.get("size", 0)) if expected else 0
        if size < BUFFERED_READ_MIN:
            return super().load_source(rel, expected, verify=verify)
        buf = self.read_buffer(rel, size)  # one preallocated buffer, no joined second copy
        if verify and expected:
            verify_record(self.url(rel), expected, checksum_bytes(buf), len(buf))
        return s3_transfer.BufferReader(buf)

    # ----- writing ------------------------------------------------------------------------------------------
    def open_write(self, rel: str) -> IO[bytes]:
        """Concurrent multipart upload from a bounded buffer pool (s3fs's own writer is sequential)."""
        return s3_transfer.S3MultipartWriter(self.fs, self.path(rel))

    def existing(self, paths: list[str]) -> list[str]:
        return paths  # a multi-object delete ignores missing keys: no HEAD per key

    def remove_empty_folders(self, rels: list[str]) -> None:
        """Object stores have no folders: nothing is left once the objects are gone."""

    # ----- compare-and-swap ---------------------------------------------------------------------------------
    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path(rel))

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                return await body.read(), resp["ETag"]
            finally:
                body.close()

        with self.errors("reading", rel):
            try:  # one GET: the content and the ETag of that very content (a HEAD first was 2 requests)
                data, etag = sync(self.fs.loop, get)
                return data, etag
            except FileNotFoundError:
                return None, None

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        bucket, key, _ = self.fs.split_path(self.path(rel))
        cond = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
        except Exception as exc:
            if is_precondition_failure(exc):
                return False
            raise StorageError(f"writing {self.url(rel)} failed: {describe(exc)}") from exc
        self.invalidate(posixpath.dirname(rel))
        return True


def _env_endpoint() -> str | None:
    import os

    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
