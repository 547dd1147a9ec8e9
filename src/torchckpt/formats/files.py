"""``layout="files"``: a folder version (``CheckpointManager.save_files``), read back by ``restore_files``.

A folder version holds a framework's files as they were (``model.safetensors``,
``optimizer.pt``, ``trainer_state.json``, nested folders), not a torchckpt payload:
``load()``/``restore()`` refuse it with a pointer to ``restore_files``, and
``torchckpt show`` summarises the tensors of its ``.safetensors`` files from their
headers alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from ..errors import CheckpointError
from ..layout import version_file
from ..records import FILES_LAYOUT, CheckpointInfo
from ..storage import Storage, VersionWriter
from .base import FileRecords, Format, TensorRow
from .devices import MapLocation
from .safetensors_file import SUFFIX, dtype_name, read_header


class FilesFormat(Format):
    """A folder of arbitrary files, each recorded under its relative path."""

    name: ClassVar[str] = FILES_LAYOUT

    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        """Folder versions are written file by file by ``save_files``, never from a payload.

        Raises:
            CheckpointError: always.
        """
        raise CheckpointError("folder versions are written by CheckpointManager.save_files(step, local_dir)")

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
        """A folder version has no torchckpt payload to load.

        Raises:
            CheckpointError: always, naming ``restore_files``.
        """
        raise CheckpointError(
            f"version {info.version} is a folder version ({len(info.files)} files, saved with save_files): "
            f"materialise it with mgr.restore_files({info.version!r}, local_dir) instead of load()/restore()"
        )

    def summarize(self, storage: Storage, info: CheckpointInfo) -> list[TensorRow]:
        """Tensors of the folder's ``.safetensors`` files, from their headers (``file:tensor`` names)."""
        rows = []
        for rel in info.files:
            if not rel.endswith(SUFFIX):
                continue
            header = read_header(storage, version_file(info.version, rel))
            for key, entry in header.items():
                if key == "__metadata__" or not isinstance(entry, dict):
                    continue
                shape = tuple(int(d) for d in entry.get("shape", ()))
                numel = 1
                for d in shape:
                    numel *= d
                rows.append(TensorRow(f"{rel}:{key}", shape, dtype_name(str(entry.get("dtype"))), numel))
        return rows
