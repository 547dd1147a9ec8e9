"""Lightning through torchckpt: ``TorchckptIO``, a ``CheckpointIO`` plugin, and its ``ModelCheckpoint``.

::

    io = TorchckptIO(CheckpointManager("s3://bucket/run"))
    ckpt = io.model_checkpoint(monitor="val_loss", save_top_k=2, save_last=True)   # a ModelCheckpoint
    trainer = Trainer(plugins=[io], callbacks=[ckpt])
    trainer.fit(model, ckpt_path="last")           # resumes from the manager's last.ckpt, on any machine

Every checkpoint Lightning writes becomes one torchckpt version named after its
file (``epoch=1-step=20.ckpt``, ``last.ckpt``), with the step, the epoch and the
logged metrics (the monitored one included) in its record. ``io.dirpath``
(``torchckpt://<key>``, the ``dirpath`` of ``io.model_checkpoint``) is a path
Lightning's own file checks resolve through the manager (a small read-only
fsspec filesystem, ``TorchckptFileSystem``), so ``fit(ckpt_path="last")``,
``"best"``, ``load_from_checkpoint(best_model_path)`` and ``ModelCheckpoint``'s
name checks see the versions, not the local disk.

Retention has one owner: Lightning's ``ModelCheckpoint`` (``save_top_k``,
``save_last``). It removes a checkpoint through ``remove_checkpoint``, which
deletes that version; a manager with its own ``RetentionPolicy`` is refused,
so nothing Lightning still counts is removed behind its back. Re-saving a name
(``last.ckpt`` every epoch) moves the name to the new version and removes the
old one in the same manifest update.

Checkpoints are stored with hyperparameters made safe (``safe_values.encode``:
paths, enums, namespaces) and loaded with ``weights_only`` semantics, verified.
``io.load_from_checkpoint(Net, "best")`` is the route for ``load_from_checkpoint``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import posixpath
import re
from datetime import datetime
from typing import Any, ClassVar

import fsspec
import torch
from fsspec.registry import register_implementation

from ..errors import CheckpointNotFoundError
from ..layout import is_version_name
from ..manager import CheckpointManager
from ..records import CheckpointInfo
from . import safe_values

try:  # the unified package first, the standalone one otherwise
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError:  # pragma: no cover - exercised only where just pytorch_lightning is installed
    from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO  # type: ignore[assignment]
    from pytorch_lightning.callbacks import ModelCheckpoint  # type: ignore[assignment]

log = logging.getLogger(__name__)

PROTOCOL = "torchckpt"
#: The object name a Lightning checkpoint is saved under inside a version.
OBJECT = "lightning"
_LAST_RE = re.compile(r"^last(-v\d+)?\.ckpt$")
_IOS: dict[str, TorchckptIO] = {}


class TorchckptIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that stores each checkpoint as a torchckpt version.

    Pass it as a plugin (``Trainer(plugins=[io])``) with ``io.model_checkpoint(...)``
    as the ``ModelCheckpoint`` callback.
    """

    def __init__(self, manager: CheckpointManager, *, key: str | None = None) -> None:
        """Wrap ``manager``.

        Args:
            manager: where versions go; it must have no ``RetentionPolicy`` (Lightning owns retention).
            key: the ``torchckpt://<key>`` name of this root (default: a hash of its URL, stable across runs).

        Raises:
            ValueError: the manager has a retention policy, or ``key`` is not a plain name.
        """
        super().__init__()
        if manager.retention is not None:
            raise ValueError(
                "TorchckptIO: Lightning's ModelCheckpoint (save_top_k/save_last) owns retention and removes "
                "versions through this plugin; create the CheckpointManager without retention="
            )
        self.manager = manager
        self.key = key or "run-" + hashlib.sha256(manager.root_url.encode()).hexdigest()[:12]
        if not is_version_name(self.key):
            raise ValueError(f"key {self.key!r} must be a plain name (letters, digits, _ . -)")
        self._metrics: dict[str, float] = {}
        self._tags: tuple[str, ...] = ()
        _IOS[self.key] = self
        register_implementation(PROTOCOL, TorchckptFileSystem, clobber=True)

    # ----- paths <-> versions ------------------------------------------------------------------------------
    @property
    def dirpath(self) -> str:
        """``torchckpt://<key>``: give it to ``ModelCheckpoint(dirpath=...)``."""
        return f"{PROTOCOL}://{self.key}"

    def path_of(self, info: CheckpointInfo) -> str:
        """The Lightning path of a version (``torchckpt://<key>/<name or id>``)."""
        return f"{self.dirpath}/{info.name or info.version}"

    def model_checkpoint(self, **kwargs: Any) -> TorchckptModelCheckpoint:
        """A ``ModelCheckpoint`` (same arguments, ``dirpath`` set) that writes through this plugin.

        Returns:
            The callback to pass to ``Trainer(callbacks=[...])``.
        """
        return TorchckptModelCheckpoint(self, **kwargs)

    def info(self, path: Any) -> CheckpointInfo:
        """The version a Lightning path or a selector names (one manifest read).

        Args:
            path: ``torchckpt://<key>/<name>``, any path whose file name is a version name (``.../last.ckpt``),
                ``"last"``, or a selector (``"latest"``, ``"best"`` by the monitored metric, an id, a name, a step).

        Raises:
            CheckpointNotFoundError: nothing matches.
        """
        if isinstance(path, CheckpointInfo | int):
            return self.manager.info(path)
        text = str(path)
        versions = self.manager.list()
        if text == "last":
            lasts = [v for v in versions if v.name and _LAST_RE.match(v.name)]
            if not lasts:
                raise CheckpointNotFoundError(f"no last.ckpt version in {self.manager.root_url}")
            return lasts[-1]
        if text == "best":
            found = _best(versions)
            if found is None:
                raise CheckpointNotFoundError(f"no version in {self.manager.root_url} records a monitored metric")
            return found
        name = posixpath.basename(text.rstrip("/")) if "/" in text else text
        return self.manager.resolve(name, versions)

    def resolve(self, selector: Any = "last") -> str:
        """A path for ``fit(ckpt_path=...)`` / ``load_from_checkpoint`` naming the version ``selector`` picks.

        Args:
            selector: see ``info`` (``"last"``, ``"best"``, ``"latest"``, an id, a name, a step).

        Returns:
            ``torchckpt://<key>/<name>``.
        """
        return self.path_of(self.info(selector))

    # ----- CheckpointIO ---------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Commit ``checkpoint`` as a version named after ``path``'s file name (a re-used name moves).

        Args:
            checkpoint: Lightning's checkpoint dict.
            path: where Lightning would have written it.
            storage_options: unused (the manager has its own).

        Raises:
            TypeError: the checkpoint holds a value a safe load could not read back.
        """
        name = posixpath.basename(str(path).rstrip("/"))
        metrics = dict(self._metrics) or _monitored(checkpoint)
        tags = ("lightning", *self._tags)
        self._metrics, self._tags = {}, ()
        step = int(checkpoint.get("global_step", 0) or 0)
        epoch = checkpoint.get("epoch")
        info = self.manager.save(
            step,
            epoch=None if epoch is None else int(epoch),
            metrics=metrics,
            tags=tags,
            name=name,
            replace=True,
            blocking=True,
            **{OBJECT: safe_values.encode(checkpoint)},
        )
        log.info("lightning checkpoint %s -> version %s", name, info.version)  # type: ignore[union-attr]

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load the version ``path`` names (verified, safely unpickled; hyperparameters decoded).

        Args:
            path: see ``info``.
            map_location: device remapping.
            weights_only: ignored: torchckpt versions are always loaded with ``weights_only`` semantics.

        Returns:
            Lightning's checkpoint dict.

        Raises:
            CheckpointNotFoundError: nothing matches ``path``.
        """
        info = self.info(path)
        return safe_values.decode(self.manager.load(info, map_location=map_location)[OBJECT])

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the version ``path`` names (missing: nothing to do, as for a file)."""
        try:
            info = self.info(path)
        except CheckpointNotFoundError:
            return
        self.manager.delete(info)

    # ----- load_from_checkpoint --------------------------------------------------------------------------
    def load_from_checkpoint(self, cls: Any, selector: Any = "best", **kwargs: Any) -> Any:
        """``cls.load_from_checkpoint`` on the version ``selector`` picks, without arbitrary unpickling.

        The version is loaded and verified by torchckpt, then handed to Lightning's own
        ``load_from_checkpoint`` (hyperparameters, ``on_load_checkpoint``, ``strict``) as an
        in-memory file loaded with ``weights_only=True``, allowing only the path, enum and
        namespace classes that torchckpt itself rebuilt.

        Args:
            cls: the ``LightningModule`` (or ``LightningDataModule``) class.
            selector: see ``info``.
            **kwargs: passed to ``cls.load_from_checkpoint`` (``map_location``, ``strict``, overrides).

        Returns:
            The loaded module.
        """
        checkpoint = self.load_checkpoint(selector, map_location=kwargs.get("map_location"))
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        buf.seek(0)
        with torch.serialization.safe_globals(sorted(safe_values.types_in(checkpoint), key=repr)):
            return cls.load_from_checkpoint(buf, weights_only=True, **kwargs)


class TorchckptModelCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` writing into ``io.dirpath``: top-k, ``last`` and metrics as versions.

    Everything is Lightning's own ``ModelCheckpoint`` (``monitor``, ``mode``,
    ``save_top_k``, ``save_last``, ``every_n_epochs``, file name templates), plus:

    * it records every scalar logged so far (not only the monitored score) and
      the monitor's name and mode with each version;
    * it finds the last checkpoint among the manager's versions, so
      ``fit(ckpt_path="last")`` resumes on any machine (Lightning's own search
      lists a local folder, and a remote ``dirpath`` loses its protocol there).
    """

    def __init__(self, ckpt_io: TorchckptIO, **kwargs: Any) -> None:
        """Create it with ``io.model_checkpoint(**kwargs)``.

        Args:
            ckpt_io: the plugin that writes the versions.
            **kwargs: ``ModelCheckpoint`` arguments (``dirpath`` is ``ckpt_io.dirpath``).

        Raises:
            ValueError: ``dirpath`` names another place.
        """
        dirpath = kwargs.pop("dirpath", None)
        if dirpath is not None and str(dirpath) != ckpt_io.dirpath:
            raise ValueError(f"TorchckptModelCheckpoint writes to {ckpt_io.dirpath}; leave dirpath out")
        super().__init__(dirpath=ckpt_io.dirpath, **kwargs)
        self.io = ckpt_io

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Hand the scalars logged so far and the monitor to the ``TorchckptIO`` that saves next."""
        metrics = {}
        for k, v in trainer.callback_metrics.items():
            value = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics[str(k)] = float(value)
        self.io._metrics = metrics
        self.io._tags = (f"monitor={self.monitor}", f"mode={self.mode}") if self.monitor else ()

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        """The newest ``last*.ckpt`` version, as a ``torchckpt://`` path Lightning opens through the plugin."""
        try:
            return {self.io.resolve("last")}
        except CheckpointNotFoundError:
            return set()


def _monitored(checkpoint: dict[str, Any]) -> dict[str, float]:
    """Without the callback: each ``ModelCheckpoint``'s monitored score from its saved state."""
    out = {}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("current_score") is not None:
            score = state["current_score"]
            value = score.item() if isinstance(score, torch.Tensor) else score
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[str(state["monitor"])] = float(value)
    return out


def _best(versions: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The best top-k version by the monitor (and mode) the newest version's ``ModelCheckpoint`` recorded."""
    from ..selectors import best

    ranked = [v for v in versions if not (v.name and _LAST_RE.match(v.name))]
    for v in reversed(versions):
        tags = dict(t.split("=", 1) for t in v.tags if "=" in t)
        if tags.get("monitor"):
            return best(ranked, tags["monitor"], tags.get("mode", "min"))
    return None


class TorchckptFileSystem(fsspec.AbstractFileSystem):
    """``torchckpt://<key>/<name>``: the versions of a ``TorchckptIO``'s manager as read-only files.

    Only what Lightning's path checks need: ``ls``/``info``/``exists``/``modified``
    (``fit(ckpt_path="last")``, ``ModelCheckpoint``'s name checks), ``open`` for
    reading (``Net.load_from_checkpoint(best_model_path)``: the version is loaded
    safely and verified by torchckpt, then served as an in-memory ``.ckpt``; the
    path, namespace and enum classes its hyperparameters hold are added to
    torch's ``weights_only`` allowlist), and ``rm`` (deletes the version).
    """

    protocol: ClassVar[str] = PROTOCOL
    root_marker: ClassVar[str] = ""

    def _io(self, path: str) -> tuple[TorchckptIO, str]:
        path = self._strip_protocol(path).strip("/")
        key, _, name = path.partition("/")
        found = _IOS.get(key)
        if found is None:
            raise FileNotFoundError(f"{PROTOCOL}://{path}: create TorchckptIO(manager) for this run first")
        return found, name

    def _entry(self, ckpt_io: TorchckptIO, info: CheckpointInfo) -> dict[str, Any]:
        return {
            "name": f"{ckpt_io.key}/{info.name or info.version}",
            "size": info.size_bytes,
            "type": "file",
            "created": info.created_at.timestamp(),
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """Every listed version (by name, else id) under ``torchckpt://<key>``, or the one file ``path`` names.

        Raises:
            FileNotFoundError: no ``TorchckptIO`` with that key in this process, or no such version.
        """
        ckpt_io, name = self._io(path)
        entries = [self._entry(ckpt_io, v) for v in ckpt_io.manager.list()] if not name else [self.info(path)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``{"name", "size", "type"}`` of the root (a directory) or of one version (a file).

        Raises:
            FileNotFoundError: no such version.
        """
        ckpt_io, name = self._io(path)
        if not name:
            return {"name": ckpt_io.key, "size": 0, "type": "directory"}
        try:
            return self._entry(ckpt_io, ckpt_io.info(name))
        except CheckpointNotFoundError:
            raise FileNotFoundError(f"{PROTOCOL}://{ckpt_io.key}/{name}") from None

    def modified(self, path: str) -> datetime:
        """When the version was created (Lightning picks the newest ``last`` by it).

        Raises:
            CheckpointNotFoundError: no such version.
        """
        ckpt_io, name = self._io(path)
        return ckpt_io.info(name).created_at

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" not in mode:
            raise PermissionError(f"{PROTOCOL}:// is read-only: Lightning writes through TorchckptIO")
        ckpt_io, name = self._io(path)
        checkpoint = ckpt_io.load_checkpoint(name)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        buf.seek(0)
        # Lightning reads this with torch.load(weights_only=True): allow the few value classes torchckpt rebuilt
        # itself (paths, argparse.Namespace, enums already imported by the caller). They construct plain values and
        # run no code; nothing a checkpoint names is imported. ``io.load_from_checkpoint`` does the same, scoped.
        extra = safe_values.types_in(checkpoint)
        if extra:
            torch.serialization.add_safe_globals(sorted(extra, key=repr))
        return buf

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete the versions ``path`` names (missing ones are ignored)."""
        for p in [path] if isinstance(path, str) else path:
            ckpt_io, name = self._io(p)
            ckpt_io.remove_checkpoint(name)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Nothing to create: versions are not folders."""

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to create: versions are not folders."""


__all__ = ["TorchckptFileSystem", "TorchckptIO", "TorchckptModelCheckpoint"]
