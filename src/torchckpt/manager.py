"""``CheckpointManager``: the public entry point; it orchestrates and decides nothing about bytes.

It knows no URL quirks (``storage/``), no file layout (``formats/``, ``layout``)
and no JSON (``manifest``, ``records``): it validates arguments, decides what to
write and in which order (``saving``, ``lifecycle``, ``distributed``), what a
selector means (``selectors``), and how a restore falls back.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import fsspec
import torch

from . import lifecycle, maintenance, rng
from . import manifest as mf
from .async_save import AsyncSaver
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ManifestError,
    ReadOnlyError,
)
from .formats import SAVE_FORMATS
from .formats.devices import MapLocation
from .formats.pickling import check_safe
from .layout import check_names
from .live_objects import capture, optimizer_owned
from .maintenance import VerifyReport
from .records import Checkpoint, CheckpointInfo
from .retention import RetentionPolicy
from .restoring import load_whole_model, read_objects, restore_into
from .saving import PAYLOAD_VERSION, clean_metrics, pickle_module, write_version
from .staging import LaterCopies, StagingPool
from .selectors import Selector, best, resolve
from .storage import open_storage

log = logging.getLogger(__name__)

__all__ = ["CheckpointManager", "Selector", "VerifyReport"]


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
        overlap_snapshot: bool = False,
    ) -> None:
        """Open (and, unless read-only, create) a checkpoint root.

        Args:
            root: a local path or an fsspec URL (``memory://x``, ``s3://bucket/prefix``).
            retention: what to keep after each save (default: everything).
            storage_options: passed to the filesystem (credentials, endpoints).
            filesystem: an fsspec filesystem to use instead of the URL's protocol.
            format: ``"torch"`` (one ``state.pt``) or ``"safetensors"``.
            async_save: ``save`` returns a future and writes in the background.
            read_only: every write raises ``ReadOnlyError`` (evaluators).
            distributed: True: every save is a collective sharded save; None: when the state is sharded.
            overlap_snapshot: async saves copy saved optimizers' parameters and state while training goes on;
                the next ``optimizer.step()`` waits for the copy (docs/getting-started.md).

        Raises:
            StorageError: the root cannot be reached or used (missing bucket, a file in the way).
            ValueError: an unknown format.
            TypeError: ``retention`` is not a ``RetentionPolicy``.
        """
        if format not in SAVE_FORMATS:
            raise ValueError(f"format must be 'torch' or 'safetensors', got {format!r}")
        if retention is not None and not isinstance(retention, RetentionPolicy):
            raise TypeError("retention must be a RetentionPolicy")
        self.storage = open_storage(root, storage_options=storage_options, filesystem=filesystem)
        self.storage.check(create=not read_only)
        self.retention = retention
        self.format = format
        self.async_save = async_save
        self.read_only = read_only
        self.distributed = distributed
        self.overlap_snapshot = overlap_snapshot
        self._saver: AsyncSaver | None = None
        log.debug("checkpoint manager on %s", self.storage.root_url)

    # ----- lifetime ------------------------------------------------------------------------------------
    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending saves and release the worker.

        Raises:
            AsyncSaveError: a background save failed.
        """
        if self._saver is not None:
            saver, self._saver = self._saver, None
            saver.close()

    def wait(self) -> None:
        """Block until every async save is committed.

        Raises:
            AsyncSaveError: the first background failure since the last ``wait``.
        """
        if self._saver is not None:
            self._saver.wait()

    @property
    def root_url(self) -> str:
        """The root, as typed (local paths as ``file://`` URLs)."""
        return self.storage.root_url

    def __repr__(self) -> str:
        return f"CheckpointManager({self.root_url!r})"

    # ----- saving -----------------------------------------------------------------------------------------
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
        """Save a new version of ``objects`` (by name), with RNG states.

        Args:
            step: the training step (a non-negative int).
            epoch: the epoch, if any.
            metrics: numbers to record (ranked by ``best`` and retention).
            extra: JSON-able values and tensors stored with the state.
            tags: strings to record.
            blocking: False: save in the background (default: the manager's ``async_save``).
            whole_model: also pickle the ``model`` module itself (for ``load_model``).
            **objects: name -> object with ``state_dict()``, a tensor, or a dict of tensors.

        Returns:
            The committed version's ``CheckpointInfo``, or a ``Future`` of it when async.

        Raises:
            ReadOnlyError: the manager is read-only.
            ValueError: bad step, epoch, metrics or object names; nothing to save.
            TypeError: a value a safe load could not read back.
            StorageError: the backend failed; nothing was listed.
            AsyncSaveError: an earlier background save failed.
        """
        self.check_writable()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise ValueError(f"epoch must be an int or None, got {epoch!r}")
        if not objects:
            raise ValueError("nothing to save: pass objects by name, e.g. save(step, model=net)")
        if self.format == "safetensors":  # names become file names: refuse bad ones before any work
            check_names(objects, "with format='safetensors' the object name")
        if whole_model and "model" not in objects:
            raise ValueError("whole_model=True needs the module passed as model=...")
        args = dict(step=step, epoch=epoch, metrics=clean_metrics(metrics), tags=tuple(str(t) for t in tags))
        extra_clean = dict(extra or {})
        run_async = self.async_save if blocking is None else not blocking
        if self._may_shard():  # sharded state / distributed=True: every rank saves through DCP
            from . import distributed

            if distributed.wants_sharded(self.distributed, objects, extra_clean):
                if whole_model:
                    raise ValueError("whole_model=True is not supported for sharded (distributed) saves")
                if not run_async:
                    self.wait()
                    return distributed.save_sharded(self.storage, self.retention, objects, extra=extra_clean, **args)
                self._saver = self._saver or AsyncSaver()  # blocked: id, capture, the shards' staging copy
                return self._saver.start(lambda pool: (distributed.begin_sharded_save(
                    self.storage, self.retention, objects, extra=extra_clean, background=True, stage=pool.snapshot,
                    **args), None))
        check_safe(extra_clean, "extra")
        states = {name: capture(name, obj) for name, obj in objects.items()}
        check_safe(states, "state")
        payload = {"torchckpt": PAYLOAD_VERSION, "objects": states, "extra": extra_clean, "rng": rng.capture()}
        module = objects["model"] if whole_model else None
        if not run_async:
            self.wait()
            return write_version(self.storage, self.format, payload, module, self.retention, **args)
        defer = optimizer_owned(objects) if self.overlap_snapshot else frozenset()  # copied in the background

        def stage(pool: StagingPool) -> tuple[Callable[[], CheckpointInfo], LaterCopies]:
            staged, later = pool.snapshot_deferred(payload, defer)  # reused (pinned for CUDA) buffers
            module_bytes = pickle_module(module) if module is not None else None
            return lambda: write_version(self.storage, self.format, staged, module_bytes, self.retention, **args), later

        self._saver = self._saver or AsyncSaver()
        return self._saver.start(stage)

    def _may_shard(self) -> bool:
        """Cheap pre-check, so single-process users never pay DCP's ~0.7 s import."""
        if self.distributed is not None:
            return self.distributed
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    # ----- reading ------------------------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Committed versions, oldest first (one manifest read).

        Raises:
            ManifestError: the manifest is corrupt (run ``torchckpt repair``).
        """
        return mf.read(self.storage).versions

    def latest(self) -> CheckpointInfo | None:
        """The most recently committed version, or None on an empty root."""
        versions = self.list()
        return versions[-1] if versions else None

    def best(self, metric: str | None = None, mode: str | None = None) -> CheckpointInfo | None:
        """The version with the best ``metric`` (default: the retention policy's); ties go to the newest.

        Args:
            metric: the metric to rank by.
            mode: ``"min"`` or ``"max"``.

        Returns:
            The best version, or None when no version has the metric.

        Raises:
            ValueError: no metric given and none in the retention policy; a bad mode.
        """
        return best(self.list(), metric, mode, self.retention)

    def info(self, version: Selector = "latest") -> CheckpointInfo:
        """The record of one version.

        Args:
            version: ``"latest"``, ``"best"``, a step, an id or a ``CheckpointInfo``.

        Raises:
            CheckpointNotFoundError: nothing matches (the message names what exists).
        """
        return self.resolve(version)

    def resolve(self, version: Selector, versions: list[CheckpointInfo] | None = None) -> CheckpointInfo:
        """Resolve a selector among ``versions`` (default: a fresh manifest read).

        Raises:
            CheckpointNotFoundError: nothing matches.
        """
        versions = self.list() if versions is None else versions
        return resolve(versions, version, root_url=self.root_url, retention=self.retention)

    def _is_listed(self, version_id: str) -> bool:
        return any(v.version == version_id for v in self.list())

    def load(
        self, version: Selector = "latest", *, map_location: MapLocation = None, verify: bool = True,
        trust_pickle: bool = False, objects: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The saved state as a plain dict (object name -> state); nothing is loaded in place.

        Args:
            version: which version (see ``info``).
            map_location: like ``torch.load``'s; None keeps available devices and falls back to the CPU.
            verify: check sizes and checksums first.
            trust_pickle: allow arbitrary pickle (only for sources you trust).
            objects: only these saved objects (``["model"]``): only their files are read where stored apart.

        Raises:
            CheckpointNotFoundError: no such version.
            ChecksumMismatchError: a file is corrupt or missing.
            UnsafeCheckpointError: loading would need arbitrary pickle.
            MissingObjectError: ``objects`` names an object the version did not save.
        """
        return read_objects(self.storage, self.resolve(version), map_location=map_location, verify=verify,
                            trust_pickle=trust_pickle, is_listed=self._is_listed, objects=objects)

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
        """Load a version's state into ``objects`` in place (by name).

        Args:
            version: which version (see ``info``).
            map_location: device remapping (see ``load``).
            strict: modules must match key for key.
            restore_rng: also restore the saved RNG states.
            fallback: when the version is corrupt or incomplete, warn and restore the newest older one that is not.
            verify: check sizes and checksums first.
            trust_pickle: allow arbitrary pickle.
            **objects: name -> live object to load into; saved names not given stay in ``.state``.

        Returns:
            A ``Checkpoint`` (``.info .step .epoch .metrics .extra .state``).

        Raises:
            CheckpointNotFoundError: no such version (or, with ``fallback``, none usable).
            MissingObjectError: a name was given that the version did not save.
            ChecksumMismatchError: the version is corrupt (without ``fallback``).
            UnsafeCheckpointError: loading would need arbitrary pickle.
        """
        self._saver and self._saver.wait_snapshot()  # an async save may still be copying these objects
        try:
            versions = self.list()
        except ManifestError as exc:
            if not fallback:
                raise
            warnings.warn(f"{exc}; falling back to the versions' meta.json files", stacklevel=2)
            versions = mf.scan(self.storage).versions
        try:
            chosen = self.resolve(version, versions)
        except CheckpointNotFoundError:
            if not (fallback and version == "latest" and versions):
                raise
            chosen = versions[-1]
        candidates = [chosen]
        if fallback:
            idx = next(i for i, v in enumerate(versions) if v.version == chosen.version)
            candidates += list(reversed(versions[:idx]))
        return restore_into(
            self.storage, candidates, objects, map_location=map_location, strict=strict, restore_rng=restore_rng,
            fallback=fallback, verify=verify, trust_pickle=trust_pickle, is_listed=self._is_listed,
            collective=self.distributed is not False and torch.distributed.is_available()
            and torch.distributed.is_initialized(),
        )

    def load_model(
        self, version: Selector = "latest", *, map_location: MapLocation = None, trust_pickle: bool = False,
        verify: bool = True,
    ) -> torch.nn.Module:
        """The whole pickled module of a ``whole_model=True`` version.

        Raises:
            UnsafeCheckpointError: without ``trust_pickle=True`` (pickled modules run code on load).
            CheckpointError: the version was not saved with ``whole_model=True``.
        """
        return load_whole_model(self.storage, self.resolve(version), map_location=map_location,
                                trust_pickle=trust_pickle, verify=verify)

    # ----- managing versions ------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise ``ReadOnlyError`` on a read-only manager."""
        if self.read_only:
            raise ReadOnlyError(f"manager on {self.root_url} is read-only; open it with read_only=False to write")

    def _set_pinned(self, version: Selector, pinned: bool) -> CheckpointInfo:
        self.check_writable()
        target = self.resolve(version).version
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
        """Protect a version from every prune; returns its updated record."""
        return self._set_pinned(version, True)

    def unpin(self, version: Selector) -> CheckpointInfo:
        """Let prunes remove a version again; returns its updated record."""
        return self._set_pinned(version, False)

    def delete(self, version: Selector) -> CheckpointInfo:
        """Remove one version: unlisted first, then its data.

        Raises:
            CheckpointError: the version is pinned (unpin it first).
        """
        self.check_writable()
        info = self.resolve(version)
        if info.pinned:
            raise CheckpointError(f"version {info.version} is pinned; unpin it first")
        lifecycle.unlist(self.storage, lambda versions: [v for v in versions if v.version == info.version])
        return info

    def prune(self, policy: RetentionPolicy | None = None, *, dry_run: bool = False) -> list[CheckpointInfo]:
        """Apply a retention policy (default: the manager's).

        Returns:
            What was removed (or, with ``dry_run``, would be).
        """
        policy = policy or self.retention
        if not dry_run:
            self.check_writable()  # even with no policy: every write of a read-only manager raises
        if policy is None:
            return []
        if dry_run:
            return policy.to_remove(self.list())
        return lifecycle.unlist(self.storage, policy.to_remove)

    def verify(self, version: Selector | None = None) -> VerifyReport:
        """Check sizes and checksums of one version or of all; never raises for bad data."""
        return maintenance.verify_versions(self.storage, self.list() if version is None else [self.resolve(version)])

    def gc(self, older_than: timedelta | float = timedelta(hours=1)) -> list[str]:
        """Remove uncommitted leftovers older than the grace period; returns what was removed."""
        self.check_writable()
        return maintenance.collect_garbage(self.storage, {v.version for v in self.list()}, older_than)

    def repair(self) -> list[CheckpointInfo]:
        """Rebuild the manifest from the versions' ``meta.json`` files; returns the listed versions."""
        self.check_writable()
        return mf.rebuild(self.storage).versions

    # ----- exports (see export.py) -------------------------------------------------------------------------------
    def export_torchscript(self, model: torch.nn.Module, version: Selector = "latest", **kwargs: Any) -> str:
        """Load ``version``'s weights into ``model``, script (or trace) it and store it; see ``export.py``.

        Returns:
            The artifact's URL.
        """
        self.check_writable()
        from .export import export_torchscript

        return export_torchscript(self, model, version, **kwargs)

    def export_program(
        self, model: torch.nn.Module, example_inputs: tuple[Any, ...], version: Selector = "latest", **kwargs: Any
    ) -> str:
        """Load ``version``'s weights into ``model``, ``torch.export`` it and store the program.

        Returns:
            The artifact's URL.
        """
        self.check_writable()
        from .export import export_program

        return export_program(self, model, example_inputs, version, **kwargs)
