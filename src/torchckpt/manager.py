"""``CheckpointManager``: the public entry point; it orchestrates and decides nothing about bytes.

It knows no URL quirks (``storage/``), no file layout (``formats/``, ``layout``)
and no JSON (``manifest``, ``records``): it validates arguments, decides what to
write and in which order (``saving``, ``lifecycle``, ``distributed``), what a
selector means (``selectors``), and how a restore falls back.
"""

from __future__ import annotations

import builtins
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import fsspec
import torch

from . import rng
from .administration import VersionAdmin
from .async_save import AsyncSaver
from .errors import (
    ReadOnlyError,
)
from .folders import FolderVersions
from .formats import SAVE_FORMATS
from .formats.pickling import check_safe
from .layout import check_version_name
from .live_objects import capture, optimizer_owned
from .maintenance import VerifyReport
from .reading import VersionReads
from .records import CheckpointInfo
from .retention import RetentionPolicy
from .saving import PAYLOAD_VERSION, check_save_args, clean_metrics, pickle_module, write_version
from .selectors import Selector
from .staging import LaterCopies, StagingPool
from .storage import open_storage
from .tiers import SHARDED_REFUSAL, Tiers
from .training.loop import TrainingLoop
from .training.ranks import skips_replicated_write
from .training.schedule import SaveSchedule

log = logging.getLogger(__name__)

__all__ = ["CheckpointManager", "Selector", "VerifyReport"]


class CheckpointManager(VersionReads, FolderVersions, TrainingLoop, VersionAdmin):
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
        cache: str | os.PathLike[str] | None = None,
        cache_keep_last: int = 2,
        save_every_steps: int | None = None,
        save_every_seconds: float | None = None,
        preemption_signals: Iterable[int | signal.Signals] = (),
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
            distributed: True: every save is a collective sharded save; None: when the state is sharded,
                and replicated state in a process group is written by rank 0 only; False: every process writes.
            cache: a local path (or fsspec URL) that saves commit to first; uploads to ``root`` run in the
                background and reads prefer it (see docs/tiers.md). Not with sharded saves.
            cache_keep_last: uploaded versions the cache keeps (besides those not uploaded yet).
            save_every_steps: ``should_save`` is True at positive multiples of this step.
            save_every_seconds: ``should_save`` is True when this many seconds passed since the last commit.
            preemption_signals: install flag-only handlers (main thread); ``should_save`` is True after one.
            overlap_snapshot: async saves copy saved optimizers' parameters and state while training goes on;
                the next ``optimizer.step()`` waits for the copy (docs/getting-started.md).

        Raises:
            StorageError: the root or the cache cannot be reached or used (missing bucket, a file in the way).
            ValueError: an unknown format; ``cache`` with ``distributed=True``; a schedule rule that is not positive.
            CheckpointError: ``preemption_signals`` given outside the main thread.
            TypeError: ``retention`` is not a ``RetentionPolicy``.
        """
        if format not in SAVE_FORMATS:
            raise ValueError(f"format must be 'torch' or 'safetensors', got {format!r}")
        if retention is not None and not isinstance(retention, RetentionPolicy):
            raise TypeError("retention must be a RetentionPolicy")
        self.storage = open_storage(root, storage_options=storage_options, filesystem=filesystem)
        self.storage.check(create=not read_only)
        if not read_only:
            self.storage.warn_if_single_writer()
        self.retention = retention
        self.format = format
        self.async_save = async_save
        self.read_only = read_only
        self.distributed = distributed
        self.overlap_snapshot = overlap_snapshot
        self._saver: AsyncSaver | None = None
        if cache is not None and distributed:
            raise ValueError(SHARDED_REFUSAL)
        self._tiers = (
            None
            if cache is None
            else Tiers(self.storage, cache, keep_last=cache_keep_last, retention=retention, read_only=read_only)
        )
        self.schedule = SaveSchedule(save_every_steps, save_every_seconds, preemption_signals=preemption_signals)
        log.debug("checkpoint manager on %s", self.storage.root_url)

    # ----- lifetime ------------------------------------------------------------------------------------
    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending saves and uploads, release the workers and put back replaced signal handlers.

        Raises:
            AsyncSaveError: a background save failed (``UploadError``: an upload to the root did).
        """
        self.schedule.close()
        try:
            if self._saver is not None:
                saver, self._saver = self._saver, None
                saver.close()
        finally:
            if self._tiers is not None:
                self._tiers.close()

    def wait(self) -> None:
        """Block until every async save is committed and, with a cache, every pending version is uploaded.

        Raises:
            AsyncSaveError: the first background failure since the last ``wait`` (``UploadError`` for uploads).
        """
        if self._saver is not None:
            self._saver.wait()
        if self._tiers is not None:
            self._tiers.wait()

    def pending_uploads(self) -> builtins.list[CheckpointInfo]:
        """Versions committed in the cache but not yet in the root, oldest first (empty without a cache)."""
        return self._tiers.pending() if self._tiers is not None else []

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
        name: str | None = None,
        replace: bool = False,
        **objects: Any,
    ) -> CheckpointInfo | Future[CheckpointInfo] | None:
        """Save a new version of ``objects`` (by name), with RNG states.

        Args:
            step: the training step (a non-negative int).
            epoch: the epoch, if any.
            metrics: numbers to record (ranked by ``best`` and retention).
            extra: JSON-able values and tensors stored with the state.
            tags: strings to record.
            blocking: False: save in the background (default: the manager's ``async_save``).
            whole_model: also pickle the ``model`` module itself (for ``load_model``).
            name: a caller-chosen name, unique among listed versions, usable as a selector.
            replace: move ``name`` from the version holding it (that version is removed in the same manifest update).
            **objects: name -> object with ``state_dict()``, a tensor, or a dict of tensors.

        Returns:
            The committed version's ``CheckpointInfo``, or a ``Future`` of it when async; None on ranks
            other than 0 of a process group saving replicated state (rank 0 writes, nobody waits).

        Raises:
            ReadOnlyError: the manager is read-only.
            ValueError: bad step, epoch, metrics or object names; nothing to save.
            TypeError: a value a safe load could not read back.
            StorageError: the backend failed; nothing was listed.
            AsyncSaveError: an earlier background save failed.
        """
        self.check_writable()
        check_save_args(step, epoch, objects, self.format, whole_model)
        args: dict[str, Any] = dict(
            step=step, epoch=epoch, metrics=clean_metrics(metrics), tags=tuple(str(t) for t in tags)
        )
        if name is not None:
            check_version_name(name)
            if self._tiers is not None:
                raise ValueError("name= is not supported with cache= (names are kept by the root's manifest)")
            args.update(name=name, replace=replace)
        extra_clean = dict(extra or {})
        run_async = self.async_save if blocking is None else not blocking
        self.schedule.save_started(step)
        if self._may_shard():  # sharded state / distributed=True: every rank saves through DCP
            from . import distributed

            if distributed.wants_sharded(self.distributed, objects, extra_clean):
                if self._tiers is not None:
                    raise ValueError(SHARDED_REFUSAL)
                if whole_model or name is not None:
                    raise ValueError("whole_model=True and name= are not supported for sharded (distributed) saves")
                if not run_async:
                    self.wait()
                    info = distributed.save_sharded(self.storage, self.retention, objects, extra=extra_clean, **args)
                    self.schedule.save_committed()
                    return info
                self._saver = self._saver or AsyncSaver()  # blocked: id, capture, the shards' staging copy
                sharded = self._saver.start(
                    lambda pool: (
                        distributed.begin_sharded_save(
                            self.storage,
                            self.retention,
                            objects,
                            extra=extra_clean,
                            background=True,
                            stage=pool.snapshot,
                            **args,
                        ),
                        None,
                    )
                )
                sharded.add_done_callback(lambda _: self.schedule.save_committed())
                return sharded
            if skips_replicated_write(self.distributed):  # replicated state: rank 0 writes it
                self.schedule.save_committed()
                return None
        check_safe(extra_clean, "extra")
        states = {name: capture(name, obj) for name, obj in objects.items()}
        check_safe(states, "state")
        payload = {"torchckpt": PAYLOAD_VERSION, "objects": states, "extra": extra_clean, "rng": rng.capture()}
        module = objects["model"] if whole_model else None
        if not run_async:
            if self._saver is not None:
                self._saver.wait()
            info = self._write(payload, module, args)
            self.schedule.save_committed()
            return info
        defer = optimizer_owned(objects) if self.overlap_snapshot else frozenset()  # copied in the background

        def stage(pool: StagingPool) -> tuple[Callable[[], CheckpointInfo], LaterCopies]:
            staged, later = pool.snapshot_deferred(payload, defer)  # reused (pinned for CUDA) buffers
            module_bytes = pickle_module(module) if module is not None else None
            return lambda: self._write(staged, module_bytes, args), later

        self._saver = self._saver or AsyncSaver()
        future = self._saver.start(stage)
        future.add_done_callback(lambda _: self.schedule.save_committed())
        return future

    def _write(self, payload: dict[str, Any], module: Any, args: dict[str, Any]) -> CheckpointInfo:
        if self._tiers is not None:  # commit to the cache; the upload runs in the background
            return self._tiers.save(self.format, payload, module, **args)
        return write_version(self.storage, self.format, payload, module, self.retention, **args)

    def _may_shard(self) -> bool:
        """Cheap pre-check, so single-process users never pay DCP's ~0.7 s import."""
        if self.distributed is not None:
            return self.distributed
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    # ----- managing versions ------------------------------------------------------------------------------------
    def check_writable(self, *, settle: bool = False) -> None:
        """Raise ``ReadOnlyError`` on a read-only manager; ``settle``: first upload what the cache holds.

        Changes to listed versions (pin, delete, export) act on the root, so a version must be there first.
        """
        if self.read_only:
            raise ReadOnlyError(f"manager on {self.root_url} is read-only; open it with read_only=False to write")
        if settle and self._tiers is not None:
            self._tiers.wait()
