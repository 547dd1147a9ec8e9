"""Sharded multi-rank versions through ``torch.distributed.checkpoint`` (DCP).

The manager stays in charge of the commit protocol; this module only knows DCP:

* **save** (every rank calls it with the same arguments): rank 0 chooses the version
  id and the folder to write into and broadcasts them; every rank writes its shards
  with DCP's fsspec writer through a stream that checksums each file as it is
  written (no second read); DCP's own collectives gather the plans and write
  ``.metadata`` on the coordinator. Then the per-rank file records are gathered on
  rank 0, which checks them against a listing of the folder, writes ``meta.json``
  (``layout="dcp"``), updates the manifest and applies retention. The committed
  record (or the error) is broadcast so that every rank returns the same
  ``CheckpointInfo`` or raises the same error. A failure on any rank commits
  nothing: DCP reports it to all ranks as ``CheckpointException`` (a
  ``BaseException``), which is turned into a ``CheckpointError`` here; rank 0
  removes what was written and ``gc`` catches anything left behind.
* **restore**: DCP reads into the live objects' own state dicts, so shards land
  where the current world size and placement want them (resharding); with no
  process group it reads the full tensors into a single process.
* **load** (plain dict): every tensor read whole in this process, no collectives.

What goes into DCP: ``objects.<name>`` (a module's ``get_model_state_dict``, an
optimizer's ``get_optimizer_state_dict`` keyed by parameter names, anything else's
``state_dict()``), ``extra`` and ``torchckpt`` (replicated: DCP keeps one copy of
equal keys, so per-rank values need rank-unique keys or DTensors), and
``rng.rank<N>`` (every rank's RNG state under its own key).

Reading is safe like the single-file layout: ``.metadata`` is unpickled with an
allowlist of DCP's metadata classes, non-tensor values with ``weights_only``
loading, and every file is checked against the size and checksum in ``meta.json``
before DCP reads from it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import posixpath
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generator, Mapping

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem as _DcpFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from . import manifest as mf
from . import rng
from .errors import CheckpointError, MissingObjectError, StorageError, UnsafeCheckpointError
from .hashing import checksum_bytes, checksum_file, digest_of, new_hasher
from .records import Checkpoint, CheckpointInfo, new_version_id, new_version_info
from .serialization import _compare as _compare_record
from .serialization import capture, check_safe, load_from

if TYPE_CHECKING:
    from .manager import CheckpointManager

log = logging.getLogger(__name__)

LAYOUT = "dcp"
METADATA_FILE = ".metadata"
PAYLOAD_VERSION = 1


# ----- when ------------------------------------------------------------------------------------------
def process_group_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_sharded(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    kinds: tuple[type, ...] = (DTensor,)
    try:
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        kinds += (ShardedTensor,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, kinds)


def _holds_sharded(obj: Any, depth: int = 0) -> bool:
    if depth > 6:
        return False
    if _is_sharded(obj):
        return True
    if isinstance(obj, torch.nn.Module):
        return any(_is_sharded(t) for t in obj.parameters()) or any(_is_sharded(t) for t in obj.buffers())
    if isinstance(obj, torch.optim.Optimizer):
        return any(_is_sharded(p) for g in obj.param_groups for p in g["params"])
    if isinstance(obj, Mapping):
        return any(_holds_sharded(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_sharded(v, depth + 1) for v in obj)
    return False


def wants_sharded(setting: bool | None, objects: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> bool:
    """``distributed=True`` always; ``None`` (auto) when a process group is up and the state is sharded."""
    if setting is False:
        return False
    if setting is True:
        return True
    return process_group_active() and (_holds_sharded(dict(objects)) or _holds_sharded(dict(extra or {})))


@contextmanager
def _quiet_single_process(single: bool) -> Generator[None, None, None]:
    """DCP warns that it "assumes" a single process; here that is the intent."""
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def _rank_world() -> tuple[int, int]:
    if process_group_active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(value: Any, collective: bool) -> Any:
    if not collective:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----- storage adapters for DCP ----------------------------------------------------------------------
class _HashingStream:
    """What DCP writes into: forwards to the real file, counts and checksums every byte."""

    def __init__(self, raw: Any, on_close: Callable[[str, int], None]) -> None:
        self.raw = raw
        self.hasher = new_hasher()
        self.size = 0
        self._on_close = on_close
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        self.raw.write(view)
        self.hasher.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.raw.close()
            self._on_close(digest_of(self.hasher), self.size)


class _StorageFS(_DcpFileSystem):
    """DCP's fsspec filesystem on our ``Storage`` instance: hashes on write, verifies on read."""

    def __init__(
        self,
        storage: Any,
        base: str,
        *,
        expected: Mapping[str, Mapping[str, Any]] | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__()
        self.storage = storage
        self.fs = storage.fs
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

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return posixpath.join(os.fspath(path), suffix) if not self.storage.is_local else os.path.join(path, suffix)

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[Any, None, None]:
        name = self._name(path)
        if "r" in mode:
            with self._open_verified(os.fspath(path), name) as stream:
                yield stream
            return

        def record(checksum: str, size: int) -> None:
            self.written[name] = {"size": size, "checksum": checksum}

        if self.storage.is_local:
            os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
            raw = open(os.fspath(path), "wb")
        else:
            raw = self.fs.open(os.fspath(path), "wb")
        stream = _HashingStream(raw, record)
        try:
            yield stream
        except BaseException:
            try:
                raw.close()
            finally:
                self.written.pop(name, None)
                try:
                    self.fs.rm(os.fspath(path))
                except Exception:  # noqa: BLE001 - gc removes it later
                    pass
            raise
        stream.close()

    @contextmanager
    def _open_verified(self, path: str, name: str) -> Generator[Any, None, None]:
        want = self.expected.get(name)
        if self.verify and want is None:
            raise CheckpointError(f"{self.storage.fs.unstrip_protocol(path)} is not listed in the version's meta.json")
        if self.storage.is_local:
            if self.verify:  # hashed from a memory map: the pages stay cached for DCP's read
                actual, size = checksum_file(path)
                _compare(self.storage.fs.unstrip_protocol(path), want, actual, size)
            with open(path, "rb") as f:
                yield f
            return
        data = self.fs.cat_file(path)
        if self.verify:
            _compare(self.storage.fs.unstrip_protocol(path), want, checksum_bytes(data), len(data))
        yield io.BytesIO(data)

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        super().rename(path, new_path)
        old, new = self._name(path), self._name(new_path)
        if old in self.written:
            self.written[new] = self.written.pop(old)

    def rm_file(self, path: str | os.PathLike) -> None:
        super().rm_file(path)
        self.written.pop(self._name(path), None)


def _compare(url: str, expected: Mapping[str, Any] | None, actual: str, size: int) -> None:
    if expected:
        _compare_record(url, expected, actual, size)


class _Writer(FsspecWriter):
    """DCP's fsspec writer on the manager's own filesystem instance (no second client)."""

    def __init__(self, storage: Any, rel_dir: str, *, sync_files: bool) -> None:
        # FileSystemWriter's constructor only records the settings; FsspecWriter's would open a new fs
        FileSystemWriter.__init__(self, storage.path(rel_dir), sync_files=sync_files, overwrite=True)
        self.fs = _StorageFS(storage, storage.path(rel_dir))
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


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"DCP metadata names {module}.{name}, which torchckpt does not load without trust_pickle=True"
        )


class _Reader(FsspecReader):
    def __init__(self, storage: Any, info: CheckpointInfo, *, verify: bool, trust_pickle: bool) -> None:
        rel_dir = mf.version_dir(info.version)
        FileSystemReader.__init__(self, storage.path(rel_dir))  # see _Writer
        self.fs = _StorageFS(storage, storage.path(rel_dir), expected=info.files, verify=verify)
        self.path = storage.path(rel_dir)
        self.trust_pickle = trust_pickle
        self._metadata: Metadata | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self._metadata is not None:  # read (and verified) once per load
            return self._metadata
        path = self.fs.concat_path(self.path, METADATA_FILE)
        with self.fs.create_stream(path, "rb") as f:
            metadata = pickle.load(f) if self.trust_pickle else _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.fs.storage.fs.unstrip_protocol(path)} is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._metadata = metadata
        return metadata


class _LoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, plus: values nobody asked for are built from the metadata
    (``fill`` says which), and non-tensor values are unpickled the safe way."""

    def __init__(self, fill: Callable[[tuple[Any, ...]], bool], *, trust_pickle: bool, strict: bool) -> None:
        super().__init__(allow_partial_load=not strict)
        self.fill = fill
        self.trust_pickle = trust_pickle

    def set_up_planner(self, state_dict: Any, metadata: Metadata | None = None, is_coordinator: bool = False) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        assert metadata is not None
        planner_data = metadata.planner_data or {}
        for key, md in metadata.state_dict_metadata.items():
            path = tuple(planner_data.get(key, (key,)))
            if not self.fill(path):
                continue
            value: Any = torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else md
            set_element(state_dict, path, value)
        super().set_up_planner(state_dict, metadata, is_coordinator)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        obj = load_from(value, trust_pickle=self.trust_pickle, what=f"DCP value {read_item.dest_index.fqn}")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _dcp_error(exc: BaseException, what: str) -> CheckpointError:
    """A ``CheckpointException`` (BaseException) as the ``CheckpointError`` it stands for."""
    failures = {r: (f[0] if isinstance(f, tuple) else f) for r, f in (getattr(exc, "failures", None) or {}).items()}
    for inner in failures.values():
        if isinstance(inner, CheckpointError):
            return inner
    parts = [f"rank {r}: {type(inner).__name__}: {inner}" for r, inner in sorted(failures.items())]
    detail = "; ".join(parts) or f"{type(exc).__name__}: {exc}"
    kind = StorageError if failures and all(isinstance(f, OSError) for f in failures.values()) else CheckpointError
    return kind(f"{what} failed: {detail}")


# ----- state in and out ------------------------------------------------------------------------------
def _optimizer_owner(optim: Any, objects: Mapping[str, Any]) -> torch.nn.Module | None:
    """The saved module whose parameters this optimizer updates (DCP keys optimizer state by their names)."""
    ids = {id(p) for g in optim.param_groups for p in g["params"]}
    best, best_count = None, 0
    for obj in objects.values():
        if isinstance(obj, torch.nn.Module):
            count = sum(1 for p in obj.parameters() if id(p) in ids)
            if count > best_count:
                best, best_count = obj, count
    return best if best is not None and best_count == len(ids) else None


def _capture(name: str, obj: Any, objects: Mapping[str, Any]) -> Any:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if isinstance(obj, torch.nn.Module):
        return get_model_state_dict(obj)
    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            return get_optimizer_state_dict(owner, obj)
        return obj.state_dict()
    return capture(name, obj)


def _apply(name: str, obj: Any, state: Any, objects: Mapping[str, Any], strict: bool) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if isinstance(obj, torch.nn.Module):
        result = set_model_state_dict(obj, state, options=StateDictOptions(strict=strict))
        if strict and (result.missing_keys or result.unexpected_keys):
            raise CheckpointError(f"{name}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        return
    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            set_optimizer_state_dict(owner, obj, state)
        else:
            obj.load_state_dict(state)
        return
    from .manager import _load_into

    _load_into(name, obj, state, strict)


def _target(name: str, obj: Any, objects: Mapping[str, Any]) -> Any:
    """What DCP loads into for a live object: its own (possibly sharded) state dict."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            _init_optimizer_state(obj)
            return get_optimizer_state_dict(owner, obj)
        return obj.state_dict()
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, Mapping):
        return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    return _capture(name, obj, objects)


def _init_optimizer_state(optim: torch.optim.Optimizer) -> None:
    """Give a fresh optimizer its state tensors (DCP needs somewhere to load them into).

    DCP's helper does a zero-lr step, but skips it when gradients exist, which would
    silently drop the saved state: hide the gradients for the moment.
    """
    if optim.state:
        return
    try:
        from torch.distributed.checkpoint.state_dict import _init_optim_state
    except ImportError:  # pragma: no cover - get_optimizer_state_dict initialises it then
        return
    params = [p for g in optim.param_groups for p in g["params"]]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        _init_optim_state(optim)
    finally:
        for p, g in zip(params, grads):
            p.grad = g


# ----- save ------------------------------------------------------------------------------------------
def save_sharded(
    manager: "CheckpointManager",
    objects: Mapping[str, Any],
    *,
    step: int,
    epoch: int | None,
    metrics: dict[str, float],
    tags: tuple[str, ...],
    extra: dict[str, Any],
) -> CheckpointInfo:
    """Collective save: every rank calls it; all return the same committed ``CheckpointInfo``."""
    storage = manager.storage
    collective = process_group_active()
    rank, world = _rank_world()
    started = time.perf_counter()

    # 1. one id and one folder for everybody (rank 0 decides)
    writer_v = None
    if rank == 0:
        created = datetime.now(timezone.utc)
        vid = new_version_id(step, created)
        writer_v = storage.version_writer(mf.version_dir(vid))
        plan: Any = (vid, created.isoformat(), writer_v.work_dir)
    else:
        plan = None
    vid, created_iso, work_dir = _broadcast(plan, collective)
    created = datetime.fromisoformat(created_iso)

    marks = [("id", time.perf_counter())]
    # 2. every rank's state; a local failure is shared before DCP starts, so no rank waits forever
    error: BaseException | None = None
    state: dict[str, Any] = {}
    try:
        state = {
            "torchckpt": {"payload": PAYLOAD_VERSION, "world_size": world},
            "objects": {name: _capture(name, obj, objects) for name, obj in objects.items()},
            "extra": extra,
            "rng": {f"rank{rank}": rng.capture()},
        }
        check_safe(_without_shards(state), "state")
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        error = exc
    failed = _any_failed(error is not None, collective)
    if failed:
        if writer_v is not None:
            writer_v.abort()
        if error is not None:
            raise error
        raise CheckpointError(f"sharded save of step {step} failed on another rank; nothing was committed")

    marks.append(("state", time.perf_counter()))
    # 3. DCP writes the shards (each rank) and .metadata (coordinator)
    fs_writer = _Writer(storage, work_dir, sync_files=storage.is_local)
    try:
        with _quiet_single_process(not collective):
            dcp.save(state, storage_writer=fs_writer, planner=DefaultSavePlanner(), no_dist=not collective)
    except (Exception, CheckpointException) as exc:
        if writer_v is not None:  # DCP raised on every rank after all ranks finished writing
            writer_v.abort()
        if isinstance(exc, CheckpointException):
            raise _dcp_error(exc, f"sharded save of step {step} to {manager.root_url}") from exc
        raise
    del state

    marks.append(("dcp", time.perf_counter()))
    # 4. rank 0 gathers every rank's file records and commits
    records: list[Any] = [None] * world
    if collective:
        dist.gather_object(fs_writer.fs.written, records if rank == 0 else None, dst=0)
    else:
        records = [fs_writer.fs.written]
    result: Any = None
    local_error: Exception | None = None
    if rank == 0:
        assert writer_v is not None
        try:
            info = _commit(manager, writer_v, records, vid=vid, created=created, step=step, epoch=epoch,
                           metrics=metrics, tags=tags, objects=tuple(objects), world=world)
            result = ("ok", info.to_record(with_index_fields=False))
        except Exception as exc:  # noqa: BLE001 - reported to every rank
            writer_v.abort()
            result = ("error", f"{type(exc).__name__}: {exc}")
            local_error = exc
    status, payload = _broadcast(result, collective)
    if status != "ok":
        if rank == 0 and local_error is not None:
            raise local_error
        raise CheckpointError(f"committing sharded step {step} failed on rank 0: {payload}")
    info = CheckpointInfo.from_record(payload, storage.url(mf.version_dir(vid)))
    marks.append(("commit", time.perf_counter()))
    log.info("saved sharded %s from %d rank(s) in %.2fs", vid, world, marks[-1][1] - started)

    # 5. retention on rank 0 only; everybody leaves together
    if rank == 0 and manager.retention is not None:
        try:
            manager.prune()
        except Exception as exc:  # noqa: BLE001 - the version is committed; pruning is best effort here
            log.warning("pruning after the sharded save of %s failed: %s", vid, exc)
    marks.append(("prune", time.perf_counter()))
    if collective:
        dist.barrier()
    marks.append(("barrier", time.perf_counter()))
    log.debug("rank %d phases: %s", rank, ", ".join(
        f"{name} {t - prev:.3f}s" for (name, t), prev in zip(marks, [started] + [t for _, t in marks])))
    return info


def _without_shards(value: Any) -> Any:
    """``value`` with DTensors/ShardedTensors as plain placeholders: DCP writes those as tensor
    chunks (never pickled), so only the rest must pass the weights_only check."""
    if _is_sharded(value):
        return torch.empty(0)
    if isinstance(value, Mapping):
        return {k: _without_shards(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_shards(v) for v in value]
    return value


def _any_failed(failed: bool, collective: bool) -> bool:
    if not collective:
        return failed
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, failed)
    return any(flags)


def _commit(
    manager: "CheckpointManager",
    writer_v: Any,
    records: list[Mapping[str, Mapping[str, Any]]],
    *,
    vid: str,
    created: datetime,
    step: int,
    epoch: int | None,
    metrics: dict[str, float],
    tags: tuple[str, ...],
    objects: tuple[str, ...],
    world: int,
) -> CheckpointInfo:
    storage = manager.storage
    files: dict[str, dict[str, Any]] = {}
    for per_rank in records:
        files.update(per_rank or {})
    if METADATA_FILE not in files:
        raise CheckpointError(f"DCP wrote no {METADATA_FILE} for {vid}")
    listed = set(storage.list_names(writer_v.work_dir))
    unknown = sorted(listed - set(files) - {mf.META})
    missing = sorted(set(files) - listed)
    if missing or unknown:
        raise CheckpointError(f"files of {vid} do not match what the ranks wrote: missing {missing}, unknown {unknown}")
    files = dict(sorted(files.items()))
    info = new_version_info(
        vid, files=files, url=storage.url(mf.version_dir(vid)), created_at=created,
        step=step, epoch=epoch, metrics=metrics, tags=tags, objects=objects, layout=LAYOUT,
    )
    rec = info.to_record(with_index_fields=False)
    rec["world_size"] = world
    writer_v.commit(mf.META, json.dumps(rec, indent=1).encode())
    # idempotent: a missing manifest is rebuilt from meta.json files, which already lists this one
    mf.update(storage, lambda m: None if m.find(vid) else mf.Manifest(m.generation, m.versions + [info]))
    return info


# ----- restore / load --------------------------------------------------------------------------------
def restore_sharded(
    manager: "CheckpointManager",
    info: CheckpointInfo,
    objects: Mapping[str, Any],
    *,
    strict: bool = True,
    restore_rng: bool = False,
    verify: bool = True,
    trust_pickle: bool = False,
) -> Checkpoint:
    """Load a DCP version into ``objects`` in place (collective when a process group is up)."""
    missing = [name for name in objects if name not in info.objects]
    if missing:
        raise MissingObjectError(
            f"version {info.version} has no {', '.join(missing)}; it saved: {', '.join(info.objects) or 'nothing'}"
        )
    collective = process_group_active() and manager.distributed is not False
    rank = dist.get_rank() if collective else 0
    given = set(objects)
    target: dict[str, Any] = {"objects": {name: _target(name, obj, objects) for name, obj in objects.items()}}
    own_rng = f"rank{rank}"

    def fill(path: tuple[Any, ...]) -> bool:
        head = path[0]
        if head == "objects":
            return len(path) > 1 and path[1] not in given
        if head == "rng":
            return restore_rng and len(path) > 1 and path[1] == own_rng
        return head in ("extra", "torchckpt")

    state = _dcp_load(manager, info, target, fill, strict=strict, verify=verify, trust_pickle=trust_pickle,
                      no_dist=not collective)
    loaded = state.get("objects", {})
    for name, obj in objects.items():
        _apply(name, obj, loaded[name], objects, strict)
    if restore_rng:
        saved_rng = state.get("rng", {}).get(own_rng)
        if saved_rng:
            rng.restore(saved_rng)
        else:
            log.warning("version %s has no RNG state for rank %d; RNG left as it is", info.version, rank)
    return Checkpoint(info=info, state=loaded, extra=state.get("extra", {}))


def read_full(
    manager: "CheckpointManager", info: CheckpointInfo, *, map_location: Any = None, verify: bool = True,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """The whole version as ``{"objects", "extra", "rng"}`` with full (unsharded) tensors, in this process."""
    state = _dcp_load(manager, info, {}, lambda path: True, strict=False, verify=verify, trust_pickle=trust_pickle,
                      no_dist=True)
    if isinstance(map_location, (str, torch.device)):
        state = _to_device(state, torch.device(map_location))
    state.setdefault("objects", {})
    state.setdefault("extra", {})
    return state


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def _dcp_load(
    manager: "CheckpointManager",
    info: CheckpointInfo,
    target: dict[str, Any],
    fill: Callable[[tuple[Any, ...]], bool],
    *,
    strict: bool,
    verify: bool,
    trust_pickle: bool,
    no_dist: bool,
) -> dict[str, Any]:
    # dcp.load copies the top level of ``target``: values the planner adds must go into nested dicts
    for head in ("objects", "extra", "rng", "torchckpt"):
        target.setdefault(head, {})
    reader = _Reader(manager.storage, info, verify=verify, trust_pickle=trust_pickle)
    planner = _LoadPlanner(fill, trust_pickle=trust_pickle, strict=strict)
    # read the metadata first, so that a missing, corrupt or unsafe one raises its own error
    # (inside dcp.load it would become an AssertionError); all ranks agree before DCP starts
    error: BaseException | None = None
    try:
        reader.read_metadata()
    except (CheckpointError, OSError, pickle.UnpicklingError, EOFError) as exc:
        error = exc
    if _any_failed(error is not None, not no_dist):
        if error is None:
            raise CheckpointError(f"another rank could not read the metadata of sharded version {info.version}")
        if isinstance(error, FileNotFoundError):
            raise CheckpointError(f"version {info.version} is missing data: {error}") from error
        if isinstance(error, CheckpointError):
            raise error
        raise CheckpointError(f"cannot read the metadata of sharded version {info.version}: {error}") from error
    try:
        with _quiet_single_process(no_dist):
            dcp.load(target, storage_reader=reader, planner=planner, no_dist=no_dist)
    except CheckpointException as exc:
        raise _dcp_error(exc, f"reading sharded version {info.version}") from exc
    except FileNotFoundError as exc:
        raise CheckpointError(f"version {info.version} is missing data: {exc}") from exc
    return target


def read_metadata(manager: "CheckpointManager", info: CheckpointInfo, *, verify: bool = True) -> Metadata:
    """DCP's ``.metadata`` of a version (checksum verified, safely unpickled)."""
    return _Reader(manager.storage, info, verify=verify, trust_pickle=False).read_metadata()


def tensor_entries(manager: "CheckpointManager", info: CheckpointInfo) -> list[tuple[str, tuple[int, ...], str, int]]:
    """``(name, shape, dtype, numel)`` of every saved tensor from the metadata alone (nothing loaded)."""
    metadata = read_metadata(manager, info)
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
        out.append((".".join(str(p) for p in path), shape, str(md.properties.dtype).replace("torch.", ""), numel))
    return out
