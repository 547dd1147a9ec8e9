"""Managing listed versions: pin, delete, prune, verify, gc, repair, exports (``CheckpointManager``'s).

A mixin of ``CheckpointManager``: each method checks what the manager allows and
hands the work to the module that owns it (``lifecycle``, ``maintenance``,
``manifest``, ``export``).
"""

from __future__ import annotations

import builtins
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from . import lifecycle, maintenance
from . import manifest as mf
from .errors import CheckpointError
from .maintenance import VerifyReport
from .records import CheckpointInfo
from .retention import RetentionPolicy
from .selectors import Selector

if TYPE_CHECKING:
    from .restoring import Copies
    from .storage import Storage


class VersionAdmin:
    """Pin, unpin, delete, prune, verify, gc, repair and export the versions of a root."""

    if TYPE_CHECKING:  # provided by CheckpointManager
        storage: Storage
        retention: RetentionPolicy | None

        def check_writable(self, *, settle: bool = False) -> None: ...
        def resolve(
            self, version: Selector, versions: builtins.list[CheckpointInfo] | None = None
        ) -> CheckpointInfo: ...
        def list(self) -> builtins.list[CheckpointInfo]: ...
        def _copies(self, info: CheckpointInfo) -> Copies: ...

    def _set_pinned(self, version: Selector, pinned: bool) -> CheckpointInfo:
        self.check_writable(settle=True)
        return lifecycle.set_pinned(self.storage, self.resolve(version).version, pinned)

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
        self.check_writable(settle=True)
        info = self.resolve(version)
        if info.pinned:
            raise CheckpointError(f"version {info.version} is pinned; unpin it first")
        lifecycle.unlist(self.storage, lambda versions: [v for v in versions if v.version == info.version])
        return info

    def prune(self, policy: RetentionPolicy | None = None, *, dry_run: bool = False) -> builtins.list[CheckpointInfo]:
        """Apply a retention policy (default: the manager's).

        Returns:
            What was removed (or, with ``dry_run``, would be).
        """
        policy = policy or self.retention
        if not dry_run:
            self.check_writable()  # even with no policy: every write of a read-only manager raises
        if policy is None:
            return []
        if dry_run:  # the root's versions: a cache's pending ones are not the root's to prune yet
            return policy.to_remove(mf.read(self.storage).versions)
        return lifecycle.unlist(self.storage, policy.to_remove)

    def verify(self, version: Selector | None = None) -> VerifyReport:
        """Check sizes and checksums of one version or of all (with a cache: the root's copy, else the cache's)."""
        infos = self.list() if version is None else [self.resolve(version)]
        return maintenance.verify_copies([self._copies(info)[-1] for info in infos])

    def gc(self, older_than: timedelta | float = timedelta(hours=1)) -> builtins.list[str]:
        """Remove uncommitted leftovers older than the grace period; returns what was removed."""
        self.check_writable()
        return maintenance.collect_garbage(self.storage, {v.version for v in self.list()}, older_than)

    def repair(self) -> builtins.list[CheckpointInfo]:
        """Rebuild the manifest from the versions' ``meta.json`` files; returns the listed versions."""
        self.check_writable()
        return mf.rebuild(self.storage).versions

    # ----- exports (see export.py) -------------------------------------------------------------------------------
    def export_torchscript(self, model: torch.nn.Module, version: Selector = "latest", **kwargs: Any) -> str:
        """Load ``version``'s weights into ``model``, script (or trace) it and store it; see ``export.py``.

        Returns:
            The artifact's URL.
        """
        self.check_writable(settle=True)
        from .export import export_torchscript

        return export_torchscript(self, model, version, **kwargs)

    def export_program(
        self, model: torch.nn.Module, example_inputs: tuple[Any, ...], version: Selector = "latest", **kwargs: Any
    ) -> str:
        """Load ``version``'s weights into ``model``, ``torch.export`` it and store the program.

        Returns:
            The artifact's URL.
        """
        self.check_writable(settle=True)
        from .export import export_program

        return export_program(self, model, example_inputs, version, **kwargs)
