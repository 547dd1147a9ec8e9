"""S3 and S3-compatible stores (``s3://``, through s3fs): conditional PUTs, multipart streams.

* Versions commit with ``MarkerLast``: data objects first, ``meta.json`` last.
* The manifest compare-and-swap is one GET (content and its ETag together) and a
  conditional PUT: ``IfMatch=<etag>``, or ``IfNoneMatch='*'`` when creating it.
  A 412/409 answer means another writer won; the caller reads again and retries.
* Data files stream through ``S3MultipartWriter`` (concurrent parts from a
  bounded buffer pool); large reads go into one preallocated buffer.
* A GET whose body is shorter or longer than the server announced
  (a torn read of an object being replaced) raises ``TornReadError``; the
  manifest code reads again.
* ``gc`` aborts multipart uploads under the root that were never finished (where
  the server can list them).
* Endpoints come from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` unless the
  storage options name one; network calls are bounded by default timeouts.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Mapping
from typing import IO, Any, ClassVar, cast

from ..errors import StorageError, TornReadError
from ..hashing import checksum_bytes, verify_record
from . import s3_transfer
from .base import describe
from .object_store import ObjectStore

log = logging.getLogger(__name__)

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


class S3Storage(ObjectStore):
    """A prefix in an S3 bucket."""

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
    def server_identity(self) -> str:
        kwargs = self.storage_options.get("client_kwargs") or {}
        return str(kwargs.get("endpoint_url") or self.storage_options.get("endpoint_url") or "aws")

    def check_container(self) -> None:
        try:
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except FileNotFoundError:
            raise StorageError(f"bucket {self.bucket!r} of {self.root_url} does not exist: create it first") from None
        except PermissionError as exc:
            raise StorageError(
                f"{self.root_url}: access to bucket {self.bucket!r} was denied ({exc}): check the credentials"
            ) from None
        except Exception as exc:
            raise StorageError(f"cannot reach {self.root_url}: {describe(exc)}") from exc

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
        return cast(IO[bytes], s3_transfer.BufferReader(buf))

    # ----- writing ------------------------------------------------------------------------------------------
    def open_write(self, rel: str) -> IO[bytes]:
        """Concurrent multipart upload from a bounded buffer pool (s3fs's own writer is sequential)."""
        return cast(IO[bytes], s3_transfer.S3MultipartWriter(self.fs, self.path(rel)))

    def abort_unfinished_uploads(self, older_than: float) -> list[str] | None:
        prefix = self.root.split("/", 1)[1] + "/" if "/" in self.root else ""
        try:
            resp = self.fs.call_s3("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix)
        except Exception as exc:  # s3rver & co.: NotImplemented
            log.debug("listing multipart uploads under %s failed: %s", self.root_url, exc)
            return None
        aborted = []
        for up in resp.get("Uploads") or []:
            started = up.get("Initiated")
            if started is not None and time.time() - started.timestamp() < older_than:
                continue  # possibly a save in progress
            with self.errors("aborting an upload", up["Key"][len(prefix) :]):
                self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted.append(up["Key"][len(prefix) :])
        return aborted

    # ----- compare-and-swap ---------------------------------------------------------------------------------
    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path(rel))

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            check_whole(self.url(rel), data, resp.get("ContentLength"))
            return data, resp["ETag"]

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


def check_whole(url: str, data: bytes, length: int | None) -> None:
    """Raise ``TornReadError`` when ``data`` is not as long as the server announced.

    (An ETag is not always an MD5 - SSE-KMS, multipart - so it is not compared; botocore
    validates the stored CRC checksums itself where the server keeps them.)
    """
    if length is not None and int(length) != len(data):
        raise TornReadError(f"{url}: read {len(data)} bytes, the server announced {length}")


def _env_endpoint() -> str | None:
    import os

    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
