"""``format="torch"``: the whole payload in one ``state.pt`` (torch zip format).

Written by ``torch.save`` streamed through a checksum; read with
``weights_only=True``, memory-mapped from a local disk after its checksum was
verified from the same pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError
from ..layout import version_file
from ..records import CheckpointInfo
from ..storage import Storage, VersionWriter
from .base import FileRecords, Format, TensorRow
from .devices import MapLocation
from .pickling import STATE_FILE, load_from, save_to


class TorchFormat(Format):
    """One ``state.pt`` per version."""

    name: ClassVar[str] = "torch"

    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        with writer.open(STATE_FILE) as f:
            return {STATE_FILE: save_to(payload, f)}

    def read(
        self, storage: Storage, info: CheckpointInfo, *, map_location: MapLocation, verify: bool, trust_pickle: bool
    ) -> dict[str, Any]:
        return read_state_file(storage, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle)

    def summarize(self, storage: Storage, info: CheckpointInfo) -> list[TensorRow]:
        payload = self.read(storage, info, map_location="cpu", verify=True, trust_pickle=False)
        return list(walk_tensors("", payload["objects"]))


def read_state_file(
    storage: Storage, info: CheckpointInfo, *, map_location: MapLocation, verify: bool, trust_pickle: bool = False
) -> dict[str, Any]:
    """Load a version's ``state.pt`` (checksum verified unless ``verify=False``).

    Raises:
        CheckpointError: the file is not a torchckpt payload.
    """
    rel = version_file(info.version, STATE_FILE)
    source = storage.load_source(rel, info.files.get(STATE_FILE), verify=verify)
    payload = load_from(source, map_location=map_location, trust_pickle=trust_pickle, mmap=True, what=storage.url(rel))
    if not isinstance(payload, dict) or "objects" not in payload:
        raise CheckpointError(f"{storage.url(rel)} is not a torchckpt state file")
    return payload


def walk_tensors(prefix: str, value: Any) -> Iterator[TensorRow]:
    """Rows for every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        yield TensorRow(prefix, tuple(value.shape), str(value.dtype).replace("torch.", ""), value.numel())
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from walk_tensors(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from walk_tensors(f"{prefix}.{i}" if prefix else str(i), v)
