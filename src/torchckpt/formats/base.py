"""The interface every stored format keeps: how a version's state becomes files and back.

A format is chosen when saving (``CheckpointManager(format=...)``) and found
again when reading from the version's record (``info.format``, ``info.layout``),
never from a string switch in the manager: see ``formats/__init__.py``.

The payload a format writes and reads is one dict::

    {"torchckpt": <payload version>, "objects": {name: state}, "extra": {...}, "rng": {...}}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, ClassVar, NamedTuple

from ..records import CheckpointInfo
from ..storage import Storage, VersionWriter
from .devices import MapLocation

#: ``{file name: {"size": int, "checksum": str}}`` of the files a format wrote.
FileRecords = dict[str, dict[str, Any]]


class TensorRow(NamedTuple):
    """One stored tensor, for summaries: dotted name, shape, dtype name, element count."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int


class Format(ABC):
    """Writes a payload into a version folder and reads it back, verified."""

    #: The value stored in ``CheckpointInfo.format`` (or ``layout`` for sharded versions).
    name: ClassVar[str]

    @abstractmethod
    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        """Write ``payload`` through ``writer`` (before its commit).

        Args:
            writer: the version being written.
            payload: the state to store (see the module docstring).

        Returns:
            Each written file's size and checksum, computed while streaming.

        Raises:
            StorageError: the backend failed.
            TypeError: the payload holds something a safe load could not read back.
        """

    @abstractmethod
    def read(
        self,
        storage: Storage,
        info: CheckpointInfo,
        *,
        map_location: MapLocation,
        verify: bool,
        trust_pickle: bool,
        objects: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """Read a version's payload back.

        Args:
            storage: where the version lives.
            info: its record (files, sizes, checksums).
            map_location: device remapping (``None``: keep available devices, else CPU).
            verify: check every file's size and checksum before using it.
            trust_pickle: allow arbitrary pickle (only for sources you trust).
            objects: only these saved objects (None: all). ``payload["objects"]`` then holds
                just those of them the version saved; a format that stores objects in separate
                files reads (and verifies) only theirs, others read everything and drop the rest.

        Returns:
            The payload dict.

        Raises:
            ChecksumMismatchError: a file differs from its record.
            UnsafeCheckpointError: loading would need arbitrary pickle.
            FileNotFoundError: a data file is missing.
        """

    @abstractmethod
    def summarize(self, storage: Storage, info: CheckpointInfo) -> list[TensorRow]:
        """Every stored tensor of the saved objects, as cheaply as the format allows.

        Raises:
            ChecksumMismatchError: a file read for the summary is corrupt.
        """


def only_objects(payload: dict[str, Any], objects: Collection[str] | None) -> dict[str, Any]:
    """``payload`` with just the named saved objects (all for None), in saved order."""
    if objects is None:
        return payload
    wanted = set(objects)
    out = dict(payload)
    out["objects"] = {k: v for k, v in payload.get("objects", {}).items() if k in wanted}
    return out
