"""Storage backends: one small module per backend, chosen by URL protocol.

``open_storage(root)`` turns what the user typed (a path, ``memory://x``,
``s3://bucket/prefix``, or an ``fsspec`` filesystem) into a ``Storage``. Adding
a backend is one new module with a ``Storage`` subclass plus one
``register_backend`` line (here, or from the user's own code or tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import Any

import fsspec

from ..errors import StorageError
from .base import Storage
from .commit import CommitStrategy, MarkerLast, RenameIntoPlace, VersionWriter
from .generic import GenericStorage

#: protocol -> "module:Class" (imported on first use, so s3fs & co. load only when needed) or a class.
_BACKENDS: dict[str, str | type[Storage]] = {}


def register_backend(protocols: Iterable[str], backend: str | type[Storage]) -> None:
    """Use ``backend`` for roots whose URL (or filesystem) has one of ``protocols``.

    Args:
        protocols: fsspec protocol names, e.g. ``("s3", "s3a")``.
        backend: a ``Storage`` subclass, or ``"module:Class"`` to import lazily.
    """
    for protocol in protocols:
        _BACKENDS[protocol] = backend


register_backend(("file", "local"), "torchckpt.storage.local:LocalStorage")
register_backend(("memory",), "torchckpt.storage.memory:MemoryStorage")
register_backend(("s3", "s3a"), "torchckpt.storage.s3:S3Storage")
register_backend(("az", "abfs", "abfss"), "torchckpt.storage.azure:AzureStorage")
register_backend(("gs", "gcs"), "torchckpt.storage.gcs:GCSStorage")


def backend_for(protocols: Iterable[str]) -> type[Storage]:
    """The registered backend class for the first known protocol (else the generic one)."""
    for protocol in protocols:
        found = _BACKENDS.get(protocol)
        if isinstance(found, str):
            module, _, name = found.partition(":")
            found = getattr(import_module(module), name)
            _BACKENDS[protocol] = found
        if found is not None:
            return found
    return GenericStorage


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def open_storage(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> Storage:
    """The ``Storage`` for a root path or URL.

    Args:
        root: a local path or an fsspec URL.
        storage_options: passed to the filesystem (credentials, endpoints, ...).
        filesystem: an fsspec filesystem to use instead of the URL's protocol.

    Returns:
        The backend's ``Storage`` (not yet checked for reachability: see ``Storage.check``).

    Raises:
        StorageError: the protocol is unknown or its package is not installed.
    """
    options = dict(storage_options or {})
    root_str = os.fspath(root)
    typed = fsspec.core.split_protocol(root_str)[0]
    try:
        if filesystem is not None:
            cls = backend_for(_protocols(filesystem))
            fs, path = filesystem, filesystem._strip_protocol(root_str)
        else:
            cls = backend_for((typed or "file",))
            options = cls.prepare_options(options)
            fs, path = fsspec.core.url_to_fs(root_str, **options)
            if cls is GenericStorage:
                cls = backend_for(_protocols(fs))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {root_str}: {exc}") from exc
    # show roots as the user typed them (adlfs spells az:// as abfs://, gcsfs gcs:// as gs://)
    shown = None
    if typed and typed not in ("file", "local") and not str(fs.unstrip_protocol(path)).startswith(f"{typed}://"):
        shown = typed
    return cls(fs, path, storage_options=options, shown_protocol=shown)


__all__ = [
    "CommitStrategy",
    "GenericStorage",
    "MarkerLast",
    "RenameIntoPlace",
    "Storage",
    "VersionWriter",
    "backend_for",
    "open_storage",
    "register_backend",
]
