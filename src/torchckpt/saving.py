"""Writing one single-file version (every format but the sharded one), through the one commit path.

``write_version`` is what a synchronous ``save`` runs on the caller's thread and
an asynchronous one runs on the worker thread with a staged copy of the state.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import torch

from .errors import CheckpointError, StorageError
from .formats import get_format
from .formats.pickling import MODULE_FILE, save_pickled
from .hashing import checksum_bytes
from .layout import check_names, new_version_id, version_dir
from .lifecycle import commit_version
from .records import CheckpointInfo, new_version_info
from .retention import RetentionPolicy
from .storage import Storage

log = logging.getLogger(__name__)

#: ``payload["torchckpt"]`` of single-file versions.
PAYLOAD_VERSION = 1


def write_version(
    storage: Storage,
    format: str,
    payload: dict[str, Any],
    module: torch.nn.Module | bytes | None,
    retention: RetentionPolicy | None,
    *,
    step: int,
    epoch: int | None,
    metrics: dict[str, float | None],
    tags: tuple[str, ...],
    name: str | None = None,
    replace: bool = False,
) -> CheckpointInfo:
    """Write, commit and list one version; apply retention in the same manifest update.

    Args:
        storage: the root.
        format: a save format name (``"torch"``, ``"safetensors"``).
        payload: ``{"torchckpt", "objects", "extra", "rng"}``.
        module: the whole module (or its pickled bytes) for ``whole_model=True``, else None.
        retention: the policy applied in the commit's manifest update.
        step: the training step.
        epoch: the epoch, if any.
        metrics: recorded metrics (finite numbers or None).
        tags: recorded tags.
        name: a caller-chosen name, unique among listed versions.
        replace: move ``name`` from the version holding it (removed in the same manifest update).

    Returns:
        The committed version's record.

    Raises:
        StorageError: the backend failed; nothing was listed.
        NameConflictError: ``name`` is held by another version and ``replace`` is False.
    """
    started = time.perf_counter()
    created = datetime.now(timezone.utc)
    vid = new_version_id(step, created)
    writer = storage.version_writer(version_dir(vid))
    try:
        files = get_format(format).write(writer, payload)
        if module is not None:
            with writer.open(MODULE_FILE) as f:
                if isinstance(module, bytes):
                    f.write(module)
                    files[MODULE_FILE] = {"size": len(module), "checksum": checksum_bytes(module)}
                else:
                    files[MODULE_FILE] = save_pickled(module, f)
        info = new_version_info(
            vid,
            files=files,
            url=storage.url(version_dir(vid)),
            created_at=created,
            step=step,
            epoch=epoch,
            metrics=metrics,
            tags=tags,
            format=format,
            objects=tuple(payload["objects"]),
            name=name,
        )
        removed = commit_version(storage, writer, info, retention, replace_name=replace)
    except BaseException as exc:
        writer.abort()
        cause = storage_cause(exc)  # torch.save turns a failed write into a RuntimeError
        if cause is not None and not isinstance(exc, CheckpointError):
            raise StorageError(f"saving step {step} to {storage.root_url} failed: {cause}") from exc
        raise
    log.info(
        "saved %s (%.1f MB) to %s in %.2fs%s",
        vid,
        info.size_bytes / 1e6,
        storage.root_url,
        time.perf_counter() - started,
        f", removed {len(removed)}" if removed else "",
    )
    return info


def check_save_args(step: Any, epoch: Any, objects: Mapping[str, Any], format: str, whole_model: bool) -> None:
    """Refuse bad ``save`` arguments before any work.

    Raises:
        ValueError: a bad step or epoch, nothing to save, a bad object name, ``whole_model`` without ``model``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise ValueError(f"epoch must be an int or None, got {epoch!r}")
    if not objects:
        raise ValueError("nothing to save: pass objects by name, e.g. save(step, model=net)")
    if format == "safetensors":  # names become file names: refuse bad ones before any work
        check_names(objects, "with format='safetensors' the object name")
    if whole_model and "model" not in objects:
        raise ValueError("whole_model=True needs the module passed as model=...")


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Metrics as JSON numbers; non-finite values become None (strict JSON), never ranked.

    Raises:
        ValueError: a metric is not a number.
    """
    clean: dict[str, float | None] = {}
    for key, value in dict(metrics or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            log.warning("metric %r is %s; recorded as null (never ranked as best)", key, value)
            value = None
        clean[str(key)] = value
    return clean


def pickle_module(module: torch.nn.Module) -> bytes:
    """The whole module pickled (``whole_model=True`` with an async save: taken at the call)."""
    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.getvalue()


def storage_cause(exc: BaseException) -> OSError | None:
    """The I/O error behind ``exc`` (itself, or one it was raised while handling), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
