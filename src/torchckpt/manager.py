"""``CheckpointManager``: orchestrates storage, manifest, serialization and retention.

It knows no URL quirks (``storage``) and no JSON layout (``manifest``); it decides
what to write, in which order, and what a version selector means.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Union

import fsspec
import torch

from . import manifest as mf
from . import rng
from .async_save import AsyncSaver
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    ManifestError,
    MissingObjectError,
    ReadOnlyError,
    StorageError,
    UnsafeCheckpointError,
)
from .hashing import checksum_bytes, checksum_file, checksum_stream
from .records import Checkpoint, CheckpointInfo, check_version_id, new_version_id, new_version_info
from .retention import RetentionPolicy
from .serialization import (
    MODULE_FILE,
    MapLocation,
    capture,
    check_safe,
    load_from,
    open_verified,
    read_payload,
    save_pickled,
    write_payload,
)
from .storage import STAGING_PREFIX, Storage

log = logging.getLogger(__name__)

Selector = Union[str, int, CheckpointInfo]
PAYLOAD_VERSION = 1
#: Failures that mean "this version's data is unusable" (for ``fallback`` and ``verify``).
DATA_ERRORS = (CheckpointError, FileNotFoundError, RuntimeError, EOFError, ValueError, OSError)


@dataclass
class VerifyReport:
    """Outcome of ``verify``: ``ok`` unless some file is missing or corrupt."""

    checked: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (version, message)

    @property
    def ok(self) -> bool:
        return not self.problems


class CheckpointManager:
    """Saves, lists, restores and prunes versions of a training state under one root."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "checkpoints",
        *,
        retention: RetentionPolicy | None = None,
        storage_options: Mapping[str, Any] | None = None,
        filesystem: fsspec.AbstractFileSystem | None = None,
        format: str = "torch",
        async_save: bool = False,
        read_only: bool = False,
        distributed: bool | None = None,
    ) -> None:
        if format not in ("torch", "safetensors"):
            raise ValueError(f"format must be 'torch' or 'safetensors', got {format!r}")
        if retention is not None and not isinstance(retention, RetentionPolicy):
            raise TypeError("retention must be a RetentionPolicy")
        self.storage = Storage(root, storage_options=storage_options, filesystem=filesystem)
        self.storage.check(create=not read_only)
        self.retention = retention
        self.format = format
        self.async_save = async_save
        self.read_only = read_only
        self.distributed = distributed
        self._saver: AsyncSaver | None = None
        log.debug("checkpoint manager on %s", self.storage.root_url)

    # ----- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending saves (raising a background failure) and release the worker."""
        if self._saver is not None:
            saver, self._saver = self._saver, None
            saver.close()

    def wait(self) -> None:
        """Block until every async save is committed; re-raise the first failure."""
        if self._saver is not None:
            self._saver.wait()

    @property
    def root_url(self) -> str:
        return self.storage.root_url

    def __repr__(self) -> str:
        return f"CheckpointManager({self.root_url!r})"

    # ----- saving -----------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        epoch: int | None = None,
        metrics: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        blocking: bool | None = None,
        whole_model: bool = False,
        **objects: Any,
    ) -> CheckpointInfo | Future[CheckpointInfo]:
        """Save a new version of ``objects`` (by name); async when ``blocking=False``."""
        self._check_writable()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise ValueError(f"epoch must be an int or None, got {epoch!r}")
        if not objects:
            raise ValueError("nothing to save: pass objects by name, e.g. save(step, model=net)")
        if self.format == "safetensors":  # names become file names: refuse bad ones before any work
            from .safetensors_format import check_object_names

            check_object_names(objects)
        if whole_model and "model" not in objects:
            raise ValueError("whole_model=True needs the module passed as model=...")
        metrics_clean = _clean_metrics(metrics)
        tags_clean = tuple(str(t) for t in tags)
        extra_clean = dict(extra or {})
        if self._may_shard():  # sharded state / distributed=True: every rank saves through DCP
            from . import distributed as shard

            if shard.wants_sharded(self.distributed, objects, extra_clean):
                if whole_model:
                    raise ValueError("whole_model=True is not supported for sharded (distributed) saves")
                self.wait()
                info = shard.save_sharded(
                    self, objects, step=step, epoch=epoch, metrics=metrics_clean, tags=tags_clean, extra=extra_clean
                )
                if self.async_save if blocking is None else not blocking:  # collective: always synchronous
                    done: Future[CheckpointInfo] = Future()
                    done.set_result(info)
                    return done
                return info
        check_safe(extra_clean, "extra")
        states = {name: capture(name, obj) for name, obj in objects.items()}
        check_safe(states, "state")
        payload = {"torchckpt": PAYLOAD_VERSION, "objects": states, "extra": extra_clean, "rng": rng.capture()}
        module = objects["model"] if whole_model else None
        run_async = self.async_save if blocking is None else not blocking
        args = dict(step=step, epoch=epoch, metrics=metrics_clean, tags=tags_clean)
        if not run_async:
            self.wait()
            return self._write(payload, module, **args)
        if self._saver is None:
            self._saver = AsyncSaver()
        self._saver.wait()  # one save in flight, and its staging buffers are about to be reused
        started = time.perf_counter()
        staged = self._saver.staging.snapshot(payload)  # one copy into reused (pinned for CUDA) buffers
        module_bytes = _pickle_module(module) if module is not None else None
        return self._saver.submit(
            lambda: self._write(staged, module_bytes, **args), blocked_s=time.perf_counter() - started
        )

    def _may_shard(self) -> bool:
        """Cheap pre-check, so single-process users never pay DCP's ~0.7 s import."""
        if self.distributed is not None:
            return self.distributed
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _write(
        self,
        payload: dict[str, Any],
        module: Any,
        *,
        step: int,
        epoch: int | None,
        metrics: dict[str, float],
        tags: tuple[str, ...],
    ) -> CheckpointInfo:
        started = time.perf_counter()
        created = datetime.now(timezone.utc)
        vid = new_version_id(step, created)
        writer = self.storage.version_writer(mf.version_dir(vid))
        try:
            files = write_payload(writer, payload, self.format)
            if module is not None:
                with writer.open(MODULE_FILE) as f:
                    if isinstance(module, bytes):
                        f.write(module)
                        files[MODULE_FILE] = {"size": len(module), "checksum": checksum_bytes(module)}
                    else:
                        files[MODULE_FILE] = save_pickled(module, f)
            info = new_version_info(
                vid, files=files, url=self.storage.url(mf.version_dir(vid)), created_at=created,
                step=step, epoch=epoch, metrics=metrics, tags=tags, format=self.format,
                objects=tuple(payload["objects"]),
            )
            writer.commit(mf.META, mf.meta_bytes(info))
        except BaseException as exc:
            writer.abort()
            cause = _storage_cause(exc)  # torch.save turns a failed write into a RuntimeError
            if cause is not None and not isinstance(exc, CheckpointError):
                raise StorageError(f"saving step {step} to {self.root_url} failed: {cause}") from exc
            raise
        removed = self._list_new(info)
        log.info(
            "saved %s (%.1f MB) to %s in %.2fs", vid, info.size_bytes / 1e6, self.root_url, time.perf_counter() - started
        )
        if removed:
            # The version is committed: a failed delete must not make the save look failed
            # (the caller would retry and duplicate it); ``gc`` removes what is left.
            try:
                self._delete_data(removed)
                log.info("removed %d version(s) from %s", len(removed), self.root_url)
            except Exception as exc:
                log.warning("retention after saving %s failed to delete unlisted data: %s", vid, exc)
        return info

    def _list_new(self, info: CheckpointInfo) -> list[CheckpointInfo]:
        """List a committed version and unlist what retention drops, in one manifest update.

        One read and one write per save instead of a second update for ``prune``;
        returns the unlisted versions, whose data the caller deletes.
        """
        removed: list[CheckpointInfo] = []

        def add(m: mf.Manifest) -> mf.Manifest:
            versions = m.versions + [info]
            removed.clear()
            if self.retention is not None:
                removed.extend(self.retention.to_remove(versions))  # never the newest (``info``)
            gone = {v.version for v in removed}
            return mf.Manifest(m.generation, [v for v in versions if v.version not in gone])

        mf.update(self.storage, add)
        return removed

    # ----- reading ----------------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Committed versions, oldest first (one manifest read)."""
        return mf.read(self.storage).versions

    def latest(self) -> CheckpointInfo | None:
        versions = self.list()
        return versions[-1] if versions else None

    def best(self, metric: str | None = None, mode: str | None = None) -> CheckpointInfo | None:
        """The version with the best ``metric`` (default: the retention policy's)."""
        return self._best(self.list(), metric, mode)

    def _best(
        self, versions: list[CheckpointInfo], metric: str | None = None, mode: str | None = None
    ) -> CheckpointInfo | None:
        metric = metric or (self.retention.metric if self.retention else None)
        mode = mode or (self.retention.mode if self.retention and self.retention.metric == metric else "min")
        if not metric:
            raise ValueError("best() needs metric=NAME (or a RetentionPolicy with metric)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        scored = [
            v
            for v in versions
            if isinstance(v.metrics.get(metric), (int, float)) and not math.isnan(v.metrics[metric])
        ]
        if not scored:
            return None
        pick = min if mode == "min" else max
        return pick(reversed(scored), key=lambda v: v.metrics[metric])  # ties: newest wins

    def info(self, version: Selector = "latest") -> CheckpointInfo:
        return self._resolve(version)

    def _resolve(self, version: Selector, versions: list[CheckpointInfo] | None = None) -> CheckpointInfo:
        """Turn a selector (latest, best, step, id, CheckpointInfo) into a listed version."""
        versions = self.list() if versions is None else versions
        found: CheckpointInfo | None = None
        if isinstance(version, CheckpointInfo):
            version = version.version
        if version == "latest":
            found = versions[-1] if versions else None
        elif version == "best":
            found = self._best(versions)  # among ``versions``: a fallback restore has no readable manifest
        elif isinstance(version, int) and not isinstance(version, bool):
            found = next((v for v in reversed(versions) if v.step == version), None)
        elif isinstance(version, str):
            check_version_id(version)
            found = next((v for v in versions if v.version == version), None)
        else:
            raise TypeError(f"version must be 'latest', 'best', a step, an id or a CheckpointInfo, not {version!r}")
        if found is None:
            raise CheckpointNotFoundError(_not_found_message(version, versions, self.root_url))
        return found

    def _read_payload(
        self, info: CheckpointInfo, map_location: MapLocation, verify: bool, trust_pickle: bool = False
    ) -> dict[str, Any]:
        if info.layout == "dcp":  # sharded version: read whole into this process (see distributed.py)
            from .distributed import read_full

            return read_full(self, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle)
        try:
            return read_payload(
                self.storage, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle
            )
        except FileNotFoundError as exc:  # a listed version lost a data file: as corrupt as a bad checksum
            if all(v.version != info.version for v in self.list()):
                raise CheckpointNotFoundError(
                    f"version {info.version} was removed (pruned or deleted) from {self.root_url} while loading"
                ) from exc
            vdir = mf.version_dir(info.version)
            name = next((n for n in info.files if n in str(exc)), None) or next(
                (n for n in info.files if not self.storage.exists(f"{vdir}/{n}")), "a data file"
            )
            expected = str(info.files.get(name, {}).get("checksum", "a recorded file"))
            raise ChecksumMismatchError(f"{info.url}/{name}", expected, "no such file") from exc

    def load(
        self, version: Selector = "latest", *, map_location: MapLocation = None, verify: bool = True,
        trust_pickle: bool = False,
    ) -> dict[str, Any]:
        """The saved state as a plain dict (object name -> state); nothing loaded in place."""
        return self._read_payload(self._resolve(version), map_location, verify, trust_pickle)["objects"]

    def restore(
        self,
        version: Selector = "latest",
        *,
        map_location: MapLocation = None,
        strict: bool = True,
        restore_rng: bool = False,
        fallback: bool = False,
        verify: bool = True,
        trust_pickle: bool = False,
        **objects: Any,
    ) -> Checkpoint:
        """Load a version's state into ``objects`` in place; see ``fallback`` for preemption."""
        try:
            versions = self.list()
        except ManifestError as exc:
            if not fallback:
                raise
            warnings.warn(f"{exc}; falling back to the versions' meta.json files", stacklevel=2)
            versions = mf.scan(self.storage).versions
        try:
            chosen = self._resolve(version, versions)
        except CheckpointNotFoundError:
            if not (fallback and version == "latest" and versions):
                raise
            chosen = versions[-1]
        candidates = [chosen]
        if fallback:
            idx = next(i for i, v in enumerate(versions) if v.version == chosen.version)
            candidates += list(reversed(versions[:idx]))
        payload: dict[str, Any] | None = None
        for info in candidates:
            try:
                if info.layout == "dcp":  # sharded: DCP loads into the live objects (collective, reshards)
                    from .distributed import restore_sharded

                    ckpt = restore_sharded(
                        self, info, objects, strict=strict, restore_rng=restore_rng, verify=verify,
                        trust_pickle=trust_pickle,
                    )
                    log.info("restored sharded %s from %s", info.version, self.root_url)
                    return ckpt
                payload = self._read_payload(info, map_location, verify, trust_pickle)
                break
            except (UnsafeCheckpointError, MissingObjectError):
                raise
            except DATA_ERRORS as exc:
                if not fallback:
                    raise
                warnings.warn(f"version {info.version} is unusable ({exc}); trying an older one", stacklevel=2)
                log.warning("restore fallback: %s unusable: %s", info.version, exc)
        if payload is None:
            raise CheckpointNotFoundError(f"no version under {self.root_url} could be restored")
        states = payload["objects"]
        missing = [name for name in objects if name not in states]
        if missing:
            raise MissingObjectError(
                f"version {info.version} has no {', '.join(missing)}; it saved: {', '.join(states) or 'nothing'}"
            )
        for name, obj in objects.items():
            _load_into(name, obj, states[name], strict)
        if restore_rng and payload.get("rng"):
            rng.restore(payload["rng"])
        log.info("restored %s from %s", info.version, self.root_url)
        return Checkpoint(info=info, state=states, extra=payload.get("extra", {}))

    def load_model(
        self, version: Selector = "latest", *, map_location: MapLocation = None, trust_pickle: bool = False,
        verify: bool = True,
    ) -> torch.nn.Module:
        """The whole pickled module of a ``whole_model=True`` version (needs ``trust_pickle``)."""
        info = self._resolve(version)
        if MODULE_FILE not in info.files:
            raise CheckpointError(f"version {info.version} was not saved with whole_model=True; use restore()")
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"version {info.version} stores a pickled module, which can run arbitrary code on load; "
                "pass trust_pickle=True if you trust its source"
            )
        rel = f"{mf.version_dir(info.version)}/{MODULE_FILE}"
        source = open_verified(self.storage, rel, info.files[MODULE_FILE], verify=verify)
        module = load_from(source, map_location=map_location, trust_pickle=True)
        if not isinstance(module, torch.nn.Module):
            raise CheckpointError(f"{self.storage.url(rel)} does not hold an nn.Module")
        return module

    # ----- managing versions ----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"manager on {self.root_url} is read-only; open it with read_only=False to write")

    def _set_pinned(self, version: Selector, pinned: bool) -> CheckpointInfo:
        self._check_writable()
        target = self._resolve(version).version
        result: list[CheckpointInfo] = []

        def change(m: mf.Manifest) -> mf.Manifest:
            info = m.find(target)
            if info is None:
                raise CheckpointNotFoundError(f"version {target} was removed meanwhile")
            result.append(info.with_(pinned=pinned))
            m.replace(result[-1])
            return m

        mf.update(self.storage, change)
        return result[-1]

    def pin(self, version: Selector) -> CheckpointInfo:
        """Protect a version from every prune."""
        return self._set_pinned(version, True)

    def unpin(self, version: Selector) -> CheckpointInfo:
        return self._set_pinned(version, False)

    def delete(self, version: Selector) -> CheckpointInfo:
        """Remove one version (refused while pinned): index first, then its data."""
        self._check_writable()
        info = self._resolve(version)
        if info.pinned:
            raise CheckpointError(f"version {info.version} is pinned; unpin it first")
        self._remove([info])
        return info

    def prune(self, policy: RetentionPolicy | None = None, *, dry_run: bool = False) -> list[CheckpointInfo]:
        """Apply a retention policy (default: the manager's); returns what was (or would be) removed."""
        policy = policy or self.retention
        if not dry_run:
            self._check_writable()  # even with no policy: every write of a read-only manager raises
        if policy is None:
            return []
        if dry_run:
            return policy.to_remove(self.list())
        return self._remove(None, policy)

    def _remove(self, chosen: list[CheckpointInfo] | None, policy: RetentionPolicy | None = None) -> list[CheckpointInfo]:
        """Unlist, then delete data: a crash in between leaves garbage for ``gc``, never a dangling entry."""
        removed: list[CheckpointInfo] = []

        def change(m: mf.Manifest) -> mf.Manifest | None:
            removed.clear()
            if policy is not None:
                removed.extend(policy.to_remove(m.versions))
            else:
                ids = {c.version for c in chosen or []}
                removed.extend(v for v in m.versions if v.version in ids)
            if not removed:
                return None
            gone = {v.version for v in removed}
            return mf.Manifest(m.generation, [v for v in m.versions if v.version not in gone])

        mf.update(self.storage, change)
        if removed:
            self._delete_data(removed)
            log.info("removed %d version(s) from %s", len(removed), self.root_url)
        return removed

    def _delete_data(self, infos: list[CheckpointInfo]) -> None:
        # meta.json first (the commit marker), so an interrupted delete leaves uncommitted garbage.
        dirs = [mf.version_dir(i.version) for i in infos]
        self.storage.remove([f"{d}/{mf.META}" for d in dirs], recursive=False)
        files = [f"{d}/{name}" for d, i in zip(dirs, infos) for name in i.files]
        exports = [f"exports/{i.version}/{name}" for i in infos for name in i.exports]
        self.storage.remove(files + exports, recursive=False)
        if not self.storage.is_s3:  # object stores have no empty folders to remove
            self.storage.remove(dirs + [f"exports/{i.version}" for i in infos])
        else:  # artifacts the manifest does not name (an export cut short before its record) go too
            unrecorded = set(self.storage.list_names("exports")) & {i.version for i in infos}
            self.storage.remove(sorted(f"exports/{v}" for v in unrecorded))

    def verify(self, version: Selector | None = None) -> VerifyReport:
        """Check sizes and checksums of one version or of all; never raises for bad data."""
        report = VerifyReport()
        targets = self.list() if version is None else [self._resolve(version)]
        for info in targets:
            report.checked.append(info.version)
            vdir = mf.version_dir(info.version)
            try:
                meta = mf.read_meta(self.storage, info.version)
                if meta.to_record(with_index_fields=False) != info.to_record(with_index_fields=False):
                    report.problems.append((info.version, f"{mf.META} differs from the manifest's record"))
            except FileNotFoundError:
                report.problems.append((info.version, f"{mf.META} is missing"))
            except CheckpointError as exc:
                report.problems.append((info.version, f"{mf.META} is damaged: {exc}"))
            for name, expected in info.files.items():
                rel = f"{vdir}/{name}"
                try:  # a backend failure is a StorageError, not a raw OSError/botocore error
                    with self.storage.errors("verifying", rel):
                        if self.storage.is_local:  # from a memory map: no copies through a file object
                            actual, size = checksum_file(self.storage.path(rel))
                        else:
                            with self.storage.fs.open(self.storage.path(rel), "rb") as f:
                                actual, size = checksum_stream(f)
                except FileNotFoundError:
                    report.problems.append((info.version, f"{name} is missing"))
                    continue
                if size != int(expected.get("size", -1)):
                    report.problems.append((info.version, f"{name}: size {size}, expected {expected.get('size')}"))
                elif actual != expected.get("checksum"):
                    report.problems.append((info.version, f"{name}: checksum {actual}, expected {expected.get('checksum')}"))
        return report

    def gc(self, older_than: timedelta | float = timedelta(hours=1)) -> list[str]:
        """Remove uncommitted leftovers older than the grace period; returns what was removed.

        The grace period protects saves in progress by other writers. Committed but
        unlisted versions are left alone: ``repair`` lists them again.
        """
        self._check_writable()
        grace = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        now = time.time()
        listed = {v.version for v in self.list()}
        committed, leftovers = mf.committed_ids(self.storage)  # one listing and a HEAD per version
        stale = []
        for name in leftovers:
            if name in listed:  # indexed but its meta.json is gone: verify reports it, repair restores it
                continue
            age = now - (_started_at(name) or self.storage.modified(f"{mf.VERSIONS}/{name}") or now)
            if age >= grace:
                stale.append(f"{mf.VERSIONS}/{name}")
        for name in self.storage.list_names(""):  # interrupted atomic writes: .<file>.<random>.tmp
            if name.startswith(".") and name.endswith(".tmp"):
                if now - (self.storage.modified(name) or now) >= grace:
                    stale.append(name)
        for name in self.storage.list_names("exports"):
            if name not in listed and name not in committed:
                stale.append(f"exports/{name}")
        self.storage.remove(stale)
        if stale:
            log.info("gc removed %d leftover(s) under %s", len(stale), self.root_url)
        return stale

    def repair(self) -> list[CheckpointInfo]:
        """Rebuild the manifest from the versions' ``meta.json`` files; returns the listed versions."""
        self._check_writable()
        return mf.rebuild(self.storage).versions

    # ----- exports (see export.py) ---------------------------------------------------------------------
    def export_torchscript(self, model: torch.nn.Module, version: Selector = "latest", **kwargs: Any) -> str:
        self._check_writable()
        from .export import export_torchscript

        return export_torchscript(self, model, version, **kwargs)

    def export_program(
        self, model: torch.nn.Module, example_inputs: tuple[Any, ...], version: Selector = "latest", **kwargs: Any
    ) -> str:
        self._check_writable()
        from .export import export_program

        return export_program(self, model, example_inputs, version, **kwargs)


# ----- helpers -------------------------------------------------------------------------------------------
def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    clean: dict[str, float | None] = {}
    for key, value in dict(metrics or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):  # strict JSON has no NaN/Infinity: record "not available"
            log.warning("metric %r is %s; recorded as null (never ranked as best)", key, value)
            value = None
        clean[str(key)] = value
    return clean


def _pickle_module(module: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.getvalue()


def _load_into(name: str, obj: Any, state: Any, strict: bool) -> None:
    """Put ``state`` into the live object ``obj`` in place."""
    if isinstance(obj, torch.nn.Module):
        from .fastload import prefill_module  # memcpy into matching CPU tensors; copy_ then no-ops

        obj.load_state_dict(prefill_module(obj, state), strict=strict)
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    elif isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(state)
    elif isinstance(obj, dict):
        if strict and set(obj) != set(state):
            raise CheckpointError(f"{name}: keys differ from the saved ones {sorted(state)} (pass strict=False)")
        for key, value in state.items():
            if isinstance(obj.get(key), torch.Tensor) and isinstance(value, torch.Tensor):
                with torch.no_grad():
                    obj[key].copy_(value)
            else:
                obj[key] = value
    else:
        raise TypeError(f"cannot restore into {name}={type(obj).__name__}: expected state_dict owner, tensor or dict")


def _storage_cause(exc: BaseException) -> OSError | None:
    """The I/O error behind ``exc`` (itself, or one it was raised while handling), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _started_at(folder: str) -> float | None:
    """Start time encoded in a version id (or staging folder name), if any."""
    stem = folder[len(STAGING_PREFIX) :] if folder.startswith(STAGING_PREFIX) else folder
    try:
        return datetime.strptime(stem[:23], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _not_found_message(version: Any, versions: list[CheckpointInfo], root: str) -> str:
    if not versions:
        return f"no version {version!r}: {root} holds no committed versions yet"
    shown = ", ".join(f"{v.version} (step {v.step})" for v in versions[-5:])
    more = f" and {len(versions) - 5} older" if len(versions) > 5 else ""
    return f"no version {version!r} in {root}; it has {shown}{more}"
