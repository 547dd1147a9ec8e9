"""``format="torch"``: the state in ``state.pt`` (torch zip format), large objects in files of their own.

Written by ``torch.save`` streamed through a checksum; read with
``weights_only=True``, memory-mapped from a local disk after its checksum was
verified from the same pages.

Layout of a version holding several objects::

    state.pt              # payload: small objects, extra, RNG; a reference for each split object
    model.state.pt        # the state of the object saved as model=... (torch.save of its state)
    optimizer.state.pt    # ... one file per object with at least SPLIT_MIN bytes of tensors

so ``restore(model=net)`` / ``load(objects=["model"])`` read and verify ``state.pt``
and ``model.state.pt`` only. A version with one object, and every version written
before this layout, keeps the whole state in ``state.pt`` (read whole, then filtered).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, ClassVar

import torch

from ..errors import CheckpointError
from ..layout import is_plain_name, version_file
from ..records import CheckpointInfo
from ..storage import Storage, VersionWriter
from .base import FileRecords, Format, TensorRow, only_objects
from .devices import MapLocation
from .pickling import STATE_FILE, load_from, save_to

#: Suffix of a split object's file: ``<name>.state.pt``.
OBJECT_SUFFIX = ".state.pt"
#: Key of the reference that stands in ``state.pt`` for an object stored in its own file.
FILE_REF = "__torchckpt_object_file__"
#: Objects with at least this many bytes of tensors get their own file (in versions of 2+ objects).
SPLIT_MIN = 1 << 20


def object_file(name: str) -> str:
    """The file of a split object."""
    return f"{name}{OBJECT_SUFFIX}"


class TorchFormat(Format):
    """``state.pt`` per version, plus ``<name>.state.pt`` per large object."""

    name: ClassVar[str] = "torch"

    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        objects = payload.get("objects", {})
        files: FileRecords = {}
        kept: dict[str, Any] = {}
        for name, state in objects.items():
            if len(objects) > 1 and is_plain_name(name) and tensor_bytes(state) >= SPLIT_MIN:
                fname = object_file(name)
                with writer.open(fname) as f:
                    files[fname] = save_to(state, f)
                kept[name] = {FILE_REF: fname}
            else:
                kept[name] = state
        with writer.open(STATE_FILE) as f:
            files[STATE_FILE] = save_to({**payload, "objects": kept} if files else payload, f)
        return files

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
        payload = read_state_file(storage, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle)
        payload = only_objects(payload, objects)
        payload["objects"] = {
            name: read_object_file(
                storage, info, name, state, map_location=map_location, verify=verify, trust_pickle=trust_pickle
            )
            for name, state in payload["objects"].items()
        }
        return payload

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


def read_object_file(
    storage: Storage,
    info: CheckpointInfo,
    name: str,
    state: Any,
    *,
    map_location: MapLocation,
    verify: bool,
    trust_pickle: bool,
) -> Any:
    """An object's state: ``state`` itself, or (for a split object's reference) its verified file.

    Raises:
        CheckpointError: the reference names a file the version did not record.
    """
    if not (isinstance(state, Mapping) and len(state) == 1 and FILE_REF in state):
        return state
    fname = state[FILE_REF]
    if fname != object_file(name) or fname not in info.files:
        raise CheckpointError(f"version {info.version} refers to a missing object file {fname!r}")
    rel = version_file(info.version, fname)
    source = storage.load_source(rel, info.files[fname], verify=verify)
    return load_from(source, map_location=map_location, trust_pickle=trust_pickle, mmap=True, what=storage.url(rel))


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


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
