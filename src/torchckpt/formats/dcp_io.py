"""The adapter between ``torch.distributed.checkpoint`` (DCP) and torchckpt's storage.

DCP writes and reads through a small filesystem interface; ``StorageFS``
implements it on a ``Storage`` so that every file is checksummed while it is
written (no second read) and verified against the version's record before DCP
reads from it. ``.metadata`` is unpickled with an allowlist of DCP's metadata
classes, and non-tensor values with ``weights_only`` loading, so reading a
sharded version is as safe as reading a single-file one.

Why private torch APIs: DCP's fsspec writer/reader classes and its filesystem
interface (``torch.distributed.checkpoint._fsspec_filesystem``) and its
``_traverse.set_element`` helper are the only way to give DCP our own streams
and to build values nobody asked for from the metadata; ``_init_optim_state`` gives a
fresh optimizer state tensors to load into. They are imported here
and nowhere else, so a torch release that moves them breaks one module.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import warnings
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem as _DcpFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from ..errors import CheckpointError, StorageError, UnsafeCheckpointError
from ..hashing import HashingWriter
from ..layout import version_dir
from ..records import CheckpointInfo
from ..storage import Storage
from .pickling import load_from

init_optim_state: Callable[[torch.optim.Optimizer], None] | None
try:  # gives a fresh optimizer its state tensors, so DCP has somewhere to load them into
    from torch.distributed.checkpoint.state_dict import _init_optim_state as init_optim_state
except ImportError:  # pragma: no cover - older/newer torch: get_optimizer_state_dict initialises it then
    init_optim_state = None

#: ``CheckpointInfo.layout`` of a sharded version.
LAYOUT = "dcp"
#: DCP's metadata file (the coordinator writes it).
METADATA_FILE = ".metadata"


@contextmanager
def quiet_single_process(single: bool) -> Generator[None, None, None]:
    """DCP warns that it "assumes" a single process; here that is the intent."""
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


class StorageFS(_DcpFileSystem):
    """DCP's fsspec filesystem on our ``Storage`` instance: hashes on write, verifies on read."""

    def __init__(
        self,
        storage: Storage,
        base: str,
        *,
        expected: Mapping[str, Mapping[str, Any]] | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__()
        self.storage = storage
        self.base = base  # the folder DCP writes into / reads from (absolute path on the fs)
        self.expected = dict(expected or {})
        self.verify = verify
        self.written: dict[str, dict[str, Any]] = {}

    def init_path(self, path: str | os.PathLike, **kwargs: Any) -> str:
        return os.fspath(path)

    def _name(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        rel = posixpath.relpath(path.replace(os.sep, "/"), self.base.replace(os.sep, "/"))
        if rel.startswith(".."):
            raise CheckpointError(f"DCP asked for {path}, outside {self.base}")
        return rel

    def _rel(self, path: str | os.PathLike) -> str:
        return self.storage.relative(os.fspath(path))

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return posixpath.join(os.fspath(path), suffix)

    def exists(self, path: str | os.PathLike) -> bool:
        return self.storage.exists(self._rel(path))

    def rm_file(self, path: str | os.PathLike) -> None:
        self.storage.remove([self._rel(path)], recursive=False)
        self.written.pop(self._name(path), None)

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        self.storage.move(self._rel(path), self._rel(new_path))
        old, new = self._name(path), self._name(new_path)
        if old in self.written:
            self.written[new] = self.written.pop(old)

    def ls(self, path: str | os.PathLike) -> list[str]:
        return [posixpath.join(os.fspath(path), n) for n in self.storage.list_names(self._rel(path))]

    def mkdir(self, path: str | os.PathLike) -> None:
        """Folders are created with their first file (and do not exist on object stores)."""

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[Any, None, None]:
        name = self._name(path)
        if "r" in mode:
            with self._open_verified(os.fspath(path), name) as stream:
                yield stream
            return

        def record(checksum: str, size: int) -> None:
            self.written[name] = {"size": size, "checksum": checksum}

        rel = self._rel(path)
        raw = self.storage.open_write(rel)  # durable once closed (fsynced on a local disk)
        stream = HashingWriter(raw, record)
        try:
            yield stream
        except BaseException:
            try:
                raw.close()
            finally:
                self.written.pop(name, None)
                try:
                    self.storage.remove([rel], recursive=False)
                except Exception:  # noqa: BLE001 - gc removes it later
                    pass
            raise
        stream.close()

    @contextmanager
    def _open_verified(self, path: str, name: str) -> Generator[Any, None, None]:
        want = self.expected.get(name)
        rel = self._rel(path)
        if self.verify and want is None:
            raise CheckpointError(f"{self.storage.url(rel)} is not listed in the version's meta.json")
        source = self.storage.load_source(rel, want, verify=self.verify)  # a local path, or verified bytes
        if isinstance(source, str):
            with open(source, "rb") as f:
                yield f
        else:
            yield source


class Writer(FsspecWriter):
    """DCP's fsspec writer on the manager's own filesystem instance (no second client)."""

    def __init__(self, storage: Storage, rel_dir: str) -> None:
        # FileSystemWriter's constructor only records the settings; FsspecWriter's would open a new fs.
        # No sync_files: our streams are durable once closed (fsynced on a local disk).
        FileSystemWriter.__init__(self, storage.path(rel_dir), sync_files=False, overwrite=True)
        self.fs: StorageFS = StorageFS(storage, storage.path(rel_dir))  # type: ignore[assignment]
        self.path = storage.path(rel_dir)


# Classes a DCP ``.metadata`` pickle may name; anything else is refused (like weights_only).
_METADATA_GLOBALS = {
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "layout"),
    ("torch", "memory_format"),
    ("torch", "strided"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
}


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"DCP metadata names {module}.{name}, which torchckpt does not load without trust_pickle=True"
        )


class Reader(FsspecReader):
    def __init__(self, storage: Storage, info: CheckpointInfo, *, verify: bool, trust_pickle: bool) -> None:
        rel_dir = version_dir(info.version)
        FileSystemReader.__init__(self, storage.path(rel_dir))  # see Writer
        self.fs: StorageFS = StorageFS(  # type: ignore[assignment]
            storage, storage.path(rel_dir), expected=info.files, verify=verify
        )
        self.path = storage.path(rel_dir)
        self.trust_pickle = trust_pickle
        self._metadata: Metadata | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self._metadata is not None:  # read (and verified) once per load
            return self._metadata
        path = self.fs.concat_path(self.path, METADATA_FILE)
        with self.fs.create_stream(path, "rb") as f:
            metadata = pickle.load(f) if self.trust_pickle else MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.fs.storage.url(self.fs.storage.relative(path))} is not DCP metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._metadata = metadata
        return metadata


class LoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, plus: values nobody asked for are built from the metadata
    (``fill`` says which), and non-tensor values are unpickled the safe way."""

    def __init__(self, fill: Callable[[tuple[Any, ...]], bool], *, trust_pickle: bool, strict: bool) -> None:
        super().__init__(allow_partial_load=not strict)
        self.fill = fill
        self.trust_pickle = trust_pickle

    def set_up_planner(self, state_dict: Any, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        assert metadata is not None
        planner_data = metadata.planner_data or {}
        for key, md in metadata.state_dict_metadata.items():
            path = tuple(planner_data.get(key, (key,)))
            if not self.fill(path):
                continue
            value: Any = (
                torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else md
            )
            set_element(state_dict, path, value)
        super().set_up_planner(state_dict, metadata, is_coordinator)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = load_from(value, trust_pickle=self.trust_pickle, what=f"DCP value {read_item.dest_index.fqn}")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class Prestaged:
    """A DCP ``AsyncStager`` for a state that is already a private copy (``StagingPool.snapshot``): no second copy."""

    _synchronize_after_execute = False

    @property
    def should_synchronize_after_execute(self) -> bool:
        return False

    def stage(self, state_dict: Any) -> Any:
        return state_dict

    def synchronize_staging(self) -> None:
        """Nothing to wait for: the copy was made before ``async_save``."""

    def close(self) -> None:
        """Nothing to release."""


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (without importing DTensor for plain tensors)."""
    return type(t).__name__ == "DTensor" and type(t).__module__.startswith("torch.distributed")


def dtensor_like(local: torch.Tensor, like: Any) -> Any:
    """A DTensor with ``like``'s sharding spec around ``local`` (a host copy of ``like``'s shard).

    DCP's own staging does the same: the spec (mesh, placements, global shape) is kept
    while the local shard lives in host memory; the writer reads only the local shard.
    """
    from torch.distributed.tensor import DTensor

    return DTensor(local, like._spec, requires_grad=False)


def dcp_error(exc: BaseException, what: str) -> CheckpointError:
    """A ``CheckpointException`` (BaseException) as the ``CheckpointError`` it stands for."""
    failures = {r: (f[0] if isinstance(f, tuple) else f) for r, f in (getattr(exc, "failures", None) or {}).items()}
    for inner in failures.values():
        if isinstance(inner, CheckpointError):
            return inner
    parts = [f"rank {r}: {type(inner).__name__}: {inner}" for r, inner in sorted(failures.items())]
    detail = "; ".join(parts) or f"{type(exc).__name__}: {exc}"
    kind = StorageError if failures and all(isinstance(f, OSError) for f in failures.values()) else CheckpointError
    return kind(f"{what} failed: {detail}")


def dcp_load(
    storage: Storage,
    info: CheckpointInfo,
    target: dict[str, Any],
    fill: Callable[[tuple[Any, ...]], bool],
    *,
    strict: bool,
    verify: bool,
    trust_pickle: bool,
    no_dist: bool,
    any_failed: Callable[[bool], bool] = bool,
) -> dict[str, Any]:
    """Load ``info`` into ``target`` through DCP (collective unless ``no_dist``).

    Args:
        storage: where the version lives.
        info: its record.
        target: nested dicts to load into (live state dicts for resharding, or empty).
        fill: which saved paths to build from the metadata when ``target`` lacks them.
        strict: refuse a partial load.
        verify: check every file against the record before DCP reads it.
        trust_pickle: allow arbitrary pickle in non-tensor values and metadata.
        no_dist: no process group (single process).
        any_failed: the collective "did any rank fail?" (identity in one process).

    Returns:
        ``target``, filled.

    Raises:
        CheckpointError: missing, corrupt or unsafe data on any rank.
    """
    # dcp.load copies the top level of ``target``: values the planner adds must go into nested dicts
    for head in ("objects", "extra", "rng", "torchckpt"):
        target.setdefault(head, {})
    reader = Reader(storage, info, verify=verify, trust_pickle=trust_pickle)
    planner = LoadPlanner(fill, trust_pickle=trust_pickle, strict=strict)
    # read the metadata first, so that a missing, corrupt or unsafe one raises its own error
    # (inside dcp.load it would become an AssertionError); all ranks agree before DCP starts
    error: BaseException | None = None
    try:
        reader.read_metadata()
    except (CheckpointError, OSError, pickle.UnpicklingError, EOFError) as exc:
        error = exc
    if any_failed(error is not None):
        if error is None:
            raise CheckpointError(f"another rank could not read the metadata of sharded version {info.version}")
        if isinstance(error, FileNotFoundError):
            raise CheckpointError(f"version {info.version} is missing data: {error}") from error
        if isinstance(error, CheckpointError):
            raise error
        raise CheckpointError(f"cannot read the metadata of sharded version {info.version}: {error}") from error
    try:
        with quiet_single_process(no_dist):
            dcp.load(target, storage_reader=reader, planner=planner, no_dist=no_dist)
    except CheckpointException as exc:
        raise dcp_error(exc, f"reading sharded version {info.version}") from exc
    except FileNotFoundError as exc:
        raise CheckpointError(f"version {info.version} is missing data: {exc}") from exc
    return target
