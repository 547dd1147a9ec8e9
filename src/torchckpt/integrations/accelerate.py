"""Accelerate's ``save_state`` / ``load_state`` folders through torchckpt folder versions.

::

    save_state(accelerator, mgr, step, output_dir="ckpt/state")     # every process calls it
    load_state(accelerator, mgr, "latest", local_dir="ckpt/restore")  # every process calls it

``save_state`` lets Accelerate write its folder (model, optimizer, scheduler,
RNG states, custom objects), waits for every process, then the main process
commits the folder as one version, through the usual commit protocol. Old
versions are removed only by the manager's retention, in the same manifest
update that lists the new one, never before it is committed (Accelerate's own
``total_limit`` deletes old local folders before writing the new one).
``load_state`` materialises a version (every file verified) and hands the folder
to ``accelerator.load_state``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..manager import CheckpointManager, Selector
from ..records import CheckpointInfo


def save_state(
    accelerator: Any,
    manager: CheckpointManager,
    step: int,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    epoch: int | None = None,
    metrics: dict[str, float] | None = None,
    name: str | None = None,
    **save_kwargs: Any,
) -> CheckpointInfo | None:
    """``accelerator.save_state`` then commit the folder as a version (on the main process).

    Args:
        accelerator: the ``accelerate.Accelerator``.
        manager: where the version goes.
        step: the training step recorded with the version.
        output_dir: the folder to write (default: Accelerate's automatic naming).
        epoch: recorded with the version.
        metrics: recorded with the version.
        name: the version's name (default: the folder's name, moved to the new version when re-used).
        **save_kwargs: passed to ``accelerator.save_state``.

    Returns:
        The committed version on the main process, None on the others.
    """
    folder = Path(accelerator.save_state(output_dir, **save_kwargs))
    accelerator.wait_for_everyone()  # every process's files are written before the main one commits
    info = None
    if accelerator.is_main_process:
        info = manager.save_files(
            step, folder, epoch=epoch, metrics=metrics, tags=("accelerate",), name=name or folder.name, replace=True
        )
    accelerator.wait_for_everyone()
    return info


def load_state(
    accelerator: Any,
    manager: CheckpointManager,
    version: Selector = "latest",
    *,
    local_dir: str | os.PathLike[str],
    **load_kwargs: Any,
) -> CheckpointInfo:
    """Materialise ``version`` into ``local_dir`` (verified) and ``accelerator.load_state`` it.

    Every process downloads its own copy (a node-local disk needs one per node).

    Args:
        accelerator: the ``accelerate.Accelerator``.
        manager: where the version is.
        version: which version.
        local_dir: where to put the folder.
        **load_kwargs: passed to ``accelerator.load_state``.

    Returns:
        The restored version's record.

    Raises:
        CheckpointNotFoundError: no such version.
        ChecksumMismatchError: a file is corrupt (nothing is loaded).
    """
    info = manager.info(version)
    target = Path(local_dir)
    if accelerator.num_processes > 1:  # one writer per folder: each process its own
        target = target / f"process-{accelerator.process_index}"
    folder = manager.restore_files(info, target)
    accelerator.load_state(str(folder), **load_kwargs)
    return info


__all__ = ["load_state", "save_state"]
