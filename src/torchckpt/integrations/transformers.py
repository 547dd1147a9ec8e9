"""Hugging Face ``Trainer`` through torchckpt: each ``checkpoint-N/`` folder committed as a folder version.

::

    mgr = CheckpointManager("s3://bucket/run", retention=RetentionPolicy(keep_last=3))
    trainer = Trainer(..., args=args, callbacks=[TorchckptCallback(mgr)])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint(mgr, args.output_dir))

``TorchckptCallback.on_save`` runs after the ``Trainer`` finished writing a
checkpoint folder (model, optimizer, scheduler, RNG states, ``trainer_state.json``)
and rotating old local folders; it commits the folder as one version named
``checkpoint-N`` (a half-written folder is never committed: the ``Trainer`` had
not called ``on_save`` yet), with the latest logged value of every metric in
``state.log_history`` and the best value of ``metric_for_best_model`` as
``best_<metric>``. Only the world's main process commits.

``resume_from_checkpoint(mgr, output_dir)`` downloads the latest committed
version into ``output_dir/checkpoint-N`` (every file verified before any is
moved into place) and returns that path, or None on an empty root (a fresh
start), so the same line works for the first run and every restart.

Retention: the manager's ``RetentionPolicy`` owns the versions in the store;
``save_total_limit`` only rotates the ``Trainer``'s local folders.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..manager import CheckpointManager, Selector

log = logging.getLogger(__name__)

#: The ``Trainer``'s checkpoint folder prefix (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``).
PREFIX = "checkpoint"


def log_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The latest finite value of every numeric key in a ``Trainer``'s ``log_history`` (``step`` left out).

    Args:
        log_history: ``state.log_history``.

    Returns:
        ``{"loss": ..., "eval_loss": ..., "learning_rate": ..., "epoch": ...}``.
    """
    metrics: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "step" and numeric and math.isfinite(value):
                metrics[str(key)] = float(value)
    return metrics


class TorchckptCallback(TrainerCallback):
    """Commits every checkpoint folder the ``Trainer`` saves as a torchckpt folder version."""

    def __init__(self, manager: CheckpointManager, *, tags: tuple[str, ...] = ("transformers",)) -> None:
        """Commit into ``manager``.

        Args:
            manager: where the versions go (its retention policy applies to them).
            tags: recorded with every version.
        """
        self.manager = manager
        self.tags = tags
        self.committed: list[Any] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Commit ``<output_dir>/checkpoint-<global_step>`` (main process only).

        Raises:
            CheckpointError: the commit failed (training stops rather than run on without checkpoints).
        """
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX}-{state.global_step}"
        if not folder.is_dir():
            log.warning("torchckpt: no checkpoint folder %s to commit", folder)
            return
        metrics = log_metrics(state.log_history)
        best_key = args.metric_for_best_model
        if best_key and state.best_metric is not None and math.isfinite(state.best_metric):
            name = best_key if best_key.startswith("eval_") else f"eval_{best_key}"
            metrics[f"best_{name}"] = float(state.best_metric)
        epoch = None if state.epoch is None else int(state.epoch)
        info = self.manager.save_files(
            state.global_step, folder, epoch=epoch, metrics=metrics, tags=self.tags, name=folder.name, replace=True
        )
        self.committed.append(info)
        log.info("torchckpt: committed %s as %s", folder, info.version)


def resume_from_checkpoint(
    manager: CheckpointManager, output_dir: str | os.PathLike[str], version: Selector = "latest"
) -> str | None:
    """Materialise a committed checkpoint folder for ``trainer.train(resume_from_checkpoint=...)``.

    Args:
        manager: the root the callback commits into.
        output_dir: the ``Trainer``'s ``output_dir``; the folder lands in ``output_dir/<version name>``.
        version: which version (default: the latest).

    Returns:
        The folder's path, or None when the root holds no version yet (train from scratch).

    Raises:
        CheckpointNotFoundError: ``version`` names nothing (other than ``"latest"`` on an empty root).
        ChecksumMismatchError: a file is corrupt (nothing is moved into place).
    """
    if version == "latest" and manager.latest() is None:
        return None
    info = manager.info(version)
    target = Path(output_dir) / (info.name or f"{PREFIX}-{info.step}")
    return str(manager.restore_files(info, target))


__all__ = ["TorchckptCallback", "log_metrics", "resume_from_checkpoint"]
