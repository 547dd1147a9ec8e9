"""The reading half of ``CheckpointManager``: list, latest, best, info, resolve, load, restore, load_model.

A mixin of ``CheckpointManager``: selectors are resolved among one manifest read
(``selectors``), payloads are read through their format with the cache tier's
copy first (``restoring``), and restores fall back as asked.
"""

from __future__ import annotations

import builtins
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import torch

from . import manifest as mf
from .async_save import AsyncSaver
from .errors import (
    ManifestError,
)
from .formats.devices import MapLocation
from .records import Checkpoint, CheckpointInfo
from .restoring import Copies, load_whole_model, read_first, read_objects, restore_into
from .retention import RetentionPolicy
from .selectors import Selector, best, resolve, restore_candidates
from .storage import Storage
from .tiers import Tiers
from .training.wrapped import KeyMap

if TYPE_CHECKING:
    from .async_save import AsyncSaver
    from .tiers import Tiers

log = logging.getLogger(__name__)


class VersionReads:
    """Listing, resolving and reading the versions of a root."""

    if TYPE_CHECKING:  # provided by CheckpointManager
        storage: Storage
        retention: RetentionPolicy | None
        distributed: bool | None
        _tiers: Tiers | None
        _saver: AsyncSaver | None

        @property
        def root_url(self) -> str: ...

    def list(self) -> builtins.list[CheckpointInfo]:
        """Committed versions, oldest first (one manifest read).

        With a cache: the root's versions plus committed cache versions not yet uploaded (``info.tiers``).

        Raises:
            ManifestError: the manifest is corrupt (run ``torchckpt repair``).
        """
        return self._tiers.list_versions() if self._tiers is not None else mf.read(self.storage).versions

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
            version: ``"latest"``, ``"best"``, a step, an id, a version name or a ``CheckpointInfo``.

        Raises:
            CheckpointNotFoundError: nothing matches (the message names what exists).
        """
        return self.resolve(version)

    def resolve(self, version: Selector, versions: builtins.list[CheckpointInfo] | None = None) -> CheckpointInfo:
        """Resolve a selector among ``versions`` (default: a fresh manifest read).

        Raises:
            CheckpointNotFoundError: nothing matches.
        """
        versions = self.list() if versions is None else versions
        return resolve(versions, version, root_url=self.root_url, retention=self.retention)

    def _is_listed(self, version_id: str) -> bool:
        return any(v.version == version_id for v in self.list())

    def load(
        self,
        version: Selector = "latest",
        *,
        map_location: MapLocation = None,
        verify: bool = True,
        trust_pickle: bool = False,
        objects: Sequence[str] | None = None,
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
        return read_first(
            self._copies(self.resolve(version)),
            lambda s, i: read_objects(
                s,
                i,
                map_location=map_location,
                verify=verify,
                trust_pickle=trust_pickle,
                is_listed=self._is_listed,
                objects=objects,
            ),
        )

    def _copies(self, info: CheckpointInfo) -> Copies:
        """Where to read a version from: the cache first (when it holds it), then the root."""
        return self._tiers.copies(info) if self._tiers is not None else [(self.storage, info)]

    @overload
    def restore(self, version: Selector = ..., *, missing_ok: Literal[False] = ..., **kwargs: Any) -> Checkpoint: ...
    @overload
    def restore(self, version: Selector = ..., *, missing_ok: bool, **kwargs: Any) -> Checkpoint | None: ...

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
        missing_ok: bool = False,
        key_map: KeyMap | None = None,
        **objects: Any,
    ) -> Checkpoint | None:
        """Load a version's state into ``objects`` in place (by name).

        Args:
            version: which version (see ``info``).
            map_location: device remapping (see ``load``).
            strict: modules must match key for key.
            restore_rng: also restore the saved RNG states.
            fallback: when the version is corrupt or incomplete, warn and restore the newest older one that is not.
            verify: check sizes and checksums first.
            trust_pickle: allow arbitrary pickle.
            missing_ok: on a root without versions, return None and load nothing (autoresume).
            key_map: ``fn(saved_key) -> new key | None (drop)`` for module state, applied before loading.
            **objects: name -> live object to load into (modules wrapped or not); saved names not given
                stay in ``.state``.

        Returns:
            A ``Checkpoint`` (``.info .step .epoch .metrics .extra .state .missing_keys .unexpected_keys``),
            or None with ``missing_ok`` on an empty root.

        Raises:
            CheckpointNotFoundError: no such version (or, with ``fallback``, none usable).
            MissingObjectError: a name was given that the version did not save.
            ChecksumMismatchError: the version is corrupt (without ``fallback``).
            UnsafeCheckpointError: loading would need arbitrary pickle.
            NoMatchingKeysError: a module would load none of its keys (``strict=False``).
        """
        self._saver and self._saver.wait_snapshot()  # an async save may still be copying these objects
        try:
            versions = self.list()
        except ManifestError as exc:
            if not fallback:
                raise
            warnings.warn(f"{exc}; falling back to the versions' meta.json files", stacklevel=2)
            versions = mf.scan(self.storage).versions
        if missing_ok and not versions:
            return None
        candidates = restore_candidates(
            versions, version, fallback=fallback, root_url=self.root_url, retention=self.retention
        )
        return restore_into(
            self.storage,
            candidates,
            objects,
            map_location=map_location,
            strict=strict,
            restore_rng=restore_rng,
            fallback=fallback,
            verify=verify,
            trust_pickle=trust_pickle,
            is_listed=self._is_listed,
            copies=self._copies,
            key_map=key_map,
            collective=self.distributed is not False
            and torch.distributed.is_available()
            and torch.distributed.is_initialized(),
        )

    def load_model(
        self,
        version: Selector = "latest",
        *,
        map_location: MapLocation = None,
        trust_pickle: bool = False,
        verify: bool = True,
    ) -> torch.nn.Module:
        """The whole pickled module of a ``whole_model=True`` version.

        Raises:
            UnsafeCheckpointError: without ``trust_pickle=True`` (pickled modules run code on load).
            CheckpointError: the version was not saved with ``whole_model=True``.
        """
        return read_first(
            self._copies(self.resolve(version)),
            lambda s, i: load_whole_model(s, i, map_location=map_location, trust_pickle=trust_pickle, verify=verify),
        )
