"""Named errors: every failure a user can act on is a ``CheckpointError``."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error torchckpt raises on purpose."""


class CheckpointNotFoundError(CheckpointError, LookupError):
    """A version selector matched nothing; the message names what exists."""


class ChecksumMismatchError(CheckpointError):
    """A stored file does not match the checksum recorded at commit."""

    def __init__(self, file: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch in {file}: expected {expected}, got {actual} "
            "(the file is corrupt; restore another version or use fallback=True)"
        )
        self.file, self.expected, self.actual = file, expected, actual

    def __reduce__(self) -> tuple:  # picklable: DCP ships a rank's failure to the other ranks
        return (type(self), (self.file, self.expected, self.actual))


class UnsafeCheckpointError(CheckpointError):
    """Loading would need arbitrary pickle; refused unless trust_pickle=True."""


class ManifestError(CheckpointError):
    """The manifest is corrupt or from a newer torchckpt."""


class StorageError(CheckpointError, OSError):
    """The storage root cannot be reached or written."""


class TornReadError(StorageError):
    """A read returned bytes that differ from what the server says the object holds.

    Some servers serve a mix of the old and the new content of an object that is
    being replaced; the manifest code reads again (a bounded number of times)
    instead of reporting a corrupt manifest.
    """


class ReadOnlyError(CheckpointError):
    """A write was attempted through a read-only manager."""


class AsyncSaveError(CheckpointError):
    """A background save failed; raised on the next save, wait() or close()."""


class NameConflictError(CheckpointError, ValueError):
    """A version name is already held by another listed version."""


class UploadError(AsyncSaveError):
    """Versions committed in a cache tier could not be uploaded to the root; they stay in the cache."""


class SnapshotChangedError(CheckpointError):
    """A tensor an async save was still copying in the background was changed in place (not by an optimizer step).

    Raised inside the background save; the next save, ``wait()`` or ``close()`` raises
    ``AsyncSaveError`` from it.
    """


class MissingObjectError(CheckpointError, KeyError):
    """restore() was given an object name that the version did not save."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SingleWriterWarning(UserWarning):
    """The root's backend cannot keep concurrent writers from losing manifest updates: use one writer."""


class NoMatchingKeysError(CheckpointError):
    """A module restore would have loaded none of the module's keys (even with strict=False)."""


__all__ = [
    "SingleWriterWarning",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "UnsafeCheckpointError",
    "ManifestError",
    "StorageError",
    "TornReadError",
    "ReadOnlyError",
    "AsyncSaveError",
    "UploadError",
    "MissingObjectError",
    "NameConflictError",
    "NoMatchingKeysError",
    "SnapshotChangedError",
]
