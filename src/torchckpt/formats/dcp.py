"""Reading sharded (``layout="dcp"``) versions in one process: ``load``, ``show``, ``copy``.

Sharded versions are *written* collectively by every rank (``torchckpt.distributed``);
reading one whole into a single process (for ``load()``, the CLI, exports) needs no
process group: DCP reads every tensor in full through the verified adapter in
``formats/dcp_io.py``. Summaries come from DCP's ``.metadata`` alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError
from ..records import CheckpointInfo
from ..storage import Storage, VersionWriter
from .base import FileRecords, Format, TensorRow, only_objects
from .dcp_io import LAYOUT, Metadata, Reader, TensorStorageMetadata, dcp_load
from .devices import MapLocation


class DcpFormat(Format):
    """A folder of DCP shard files plus ``.metadata``."""

    name: ClassVar[str] = LAYOUT

    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        raise CheckpointError("sharded versions are written by every rank together: see torchckpt.distributed")

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
        """The version as ``{"objects", "extra", "rng"}`` with full (unsharded) tensors, in this process.

        Every shard file is read; ``objects`` only filters what is returned.
        """
        state = dcp_load(
            storage, info, {}, lambda path: True, strict=False, verify=verify, trust_pickle=trust_pickle, no_dist=True
        )
        if isinstance(map_location, (str, torch.device)):
            state = _to_device(state, torch.device(map_location))
        state.setdefault("objects", {})
        state.setdefault("extra", {})
        return only_objects(state, objects)

    def summarize(self, storage: Storage, info: CheckpointInfo) -> list[TensorRow]:
        """Full shapes of every saved object's tensors from the metadata (nothing else is read)."""
        metadata = read_metadata(storage, info)
        planner_data = metadata.planner_data or {}
        out = []
        for key, md in metadata.state_dict_metadata.items():
            if not isinstance(md, TensorStorageMetadata):
                continue
            path = tuple(planner_data.get(key, (key,)))
            if not path or path[0] != "objects":  # like the single-file summary: saved objects only
                continue
            path = path[1:]
            shape = tuple(int(s) for s in md.size)
            numel = 1
            for s in shape:
                numel *= s
            out.append(
                TensorRow(".".join(str(p) for p in path), shape, str(md.properties.dtype).replace("torch.", ""), numel)
            )
        return out


def read_metadata(storage: Storage, info: CheckpointInfo, *, verify: bool = True) -> Metadata:
    """DCP's ``.metadata`` of a version (checksum verified, safely unpickled)."""
    return Reader(storage, info, verify=verify, trust_pickle=False).read_metadata()


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value
