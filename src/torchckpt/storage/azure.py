"""Azure Blob Storage (``az://``, ``abfs://``, ``abfss://``, through adlfs): ETag compare-and-swap.

* Versions commit with ``MarkerLast``: data blobs first, ``meta.json`` last.
* The manifest compare-and-swap is one GET (``download_blob``: content and the
  ETag of that very content) and a conditional upload: ``If-Match: <etag>``, or
  ``If-None-Match: *`` when creating it. 412 ``ConditionNotMet`` / 409
  ``BlobAlreadyExists`` mean another writer won; the caller reads again.
* Construction checks the container with one request and no retries (azure-core
  would otherwise retry an unreachable endpoint for about 85 s): a missing
  container, rejected credentials (401/403) or an unreachable endpoint is one
  ``StorageError``.
* Data blobs stream as staged blocks (8 MiB each, committed on close); a failed
  stream never commits (``Storage.discard``), and uncommitted blocks are dropped
  by the service after 7 days.
* Everything goes through adlfs's own async client and event loop
  (``fs.service_client``, ``fs.loop``): no second client.
"""

from __future__ import annotations

import posixpath
from typing import IO, Any, ClassVar

from ..errors import StorageError, TornReadError
from .base import describe
from .object_store import ObjectStore, Upload

#: Block size of streamed data blobs (adlfs's default is 50 MiB per open file).
BLOCK_SIZE = 8 << 20
#: Seconds the construction-time container check waits to connect.
CONNECT_TIMEOUT = 10


def _sync(fs: Any, coro_fn: Any) -> Any:
    from fsspec.asyn import sync

    return sync(fs.loop, coro_fn)


def _code(exc: BaseException) -> str | None:
    """The Azure error code (``ContainerNotFound``, ``AuthorizationFailure``, ...) of an SDK error."""
    code = getattr(exc, "error_code", None)
    return None if code is None else str(code)


class AzureStorage(ObjectStore):
    """A prefix in an Azure Blob container."""

    kind: ClassVar[str] = "azure"

    @property
    def container(self) -> str:
        """The container holding the root."""
        return self.root.split("/", 1)[0]

    def _blob(self, rel: str) -> tuple[str, str]:
        container, blob, _ = self.fs.split_path(self.path(rel))
        return container, blob

    def server_identity(self) -> str:
        return str(getattr(self.fs, "account_url", None) or self.fs.service_client.url)

    def check_container(self) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        async def props() -> None:
            async with self.fs.service_client.get_container_client(self.container) as cc:
                await cc.get_container_properties(retry_total=0, connection_timeout=CONNECT_TIMEOUT)

        try:
            _sync(self.fs, props)
        except ResourceNotFoundError:
            raise StorageError(
                f"container {self.container!r} of {self.root_url} does not exist: create it first"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise StorageError(
                    f"{self.root_url}: the credentials were rejected ({exc.status_code} {_code(exc)}): "
                    "check the account key, SAS token or connection string"
                ) from None
            raise StorageError(f"cannot use {self.root_url}: {exc.status_code} {_code(exc)}") from exc
        except Exception as exc:  # ServiceRequestError: DNS, connection refused, TLS
            raise StorageError(f"cannot reach {self.root_url}: {describe(exc)}") from exc

    # ----- compare-and-swap ---------------------------------------------------------------------------------
    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        container, blob = self._blob(rel)

        async def get() -> tuple[bytes | None, str | None]:
            async with self.fs.service_client.get_blob_client(container, blob) as bc:
                try:
                    stream = await bc.download_blob()
                except ResourceNotFoundError:
                    return None, None
                data = await stream.readall()
                size = stream.properties.size
                if size is not None and int(size) != len(data):
                    raise TornReadError(f"{self.url(rel)}: read {len(data)} bytes, the blob holds {size}")
                return data, stream.properties.etag

        with self.errors("reading", rel):
            return _sync(self.fs, get)

    def write_conditional(self, rel: str, data: bytes, token: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError

        container, blob = self._blob(rel)

        async def put() -> None:
            async with self.fs.service_client.get_blob_client(container, blob) as bc:
                if token:
                    await bc.upload_blob(
                        data, overwrite=True, etag=token, match_condition=MatchConditions.IfNotModified
                    )
                else:
                    await bc.upload_blob(data, overwrite=False)  # If-None-Match: *

        try:
            _sync(self.fs, put)
        except ResourceModifiedError:  # 412 ConditionNotMet: another writer won
            return False
        except ResourceExistsError as exc:  # 409: BlobAlreadyExists is a lost create; a lease conflict is not
            if _code(exc) in ("BlobAlreadyExists", None):
                return False
            raise StorageError(f"writing {self.url(rel)} failed: {describe(exc)}") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                return False
            raise StorageError(f"writing {self.url(rel)} failed: {exc.status_code} {describe(exc)}") from exc
        except Exception as exc:
            raise StorageError(f"writing {self.url(rel)} failed: {describe(exc)}") from exc
        finally:
            self.invalidate(posixpath.dirname(rel))
        return True

    # ----- data -----------------------------------------------------------------------------------------------
    def open_write(self, rel: str) -> IO[bytes]:
        """Staged blocks of ``BLOCK_SIZE``, committed as one blob on close."""
        with self.errors("writing", rel):
            return Upload(self, rel, self.fs.open(self.path(rel), "wb", block_size=BLOCK_SIZE))  # type: ignore[return-value]
