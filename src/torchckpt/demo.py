"""``torchckpt demo``: the whole life of a training run's checkpoints in a few seconds.

Trains the tutorial regression model (``Linear(128,16)-ReLU-Linear(16,1)``) on
synthetic data with a retention policy, saving every epoch with its validation
loss; simulates a preemption; resumes into a fresh model and optimizer from the
latest version; finishes; exports the best version to TorchScript and runs it.
Messages go to ``report`` (the CLI prints them); the library itself only logs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .manager import CheckpointManager
from .records import CheckpointInfo
from .retention import RetentionPolicy

log = logging.getLogger(__name__)

DEMO_TAG = "torchckpt-demo"
METRIC = "val_loss"
_BATCH = 64


@dataclass
class DemoResult:
    """What happened, for the CLI's ``--json`` and for tests."""

    root: str
    epochs: int
    interrupted_after: int
    resumed_from: str
    versions: list[CheckpointInfo]
    removed: list[str] = field(default_factory=list)
    best: str | None = None
    export_url: str | None = None
    export_val_loss: float | None = None
    best_val_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "epochs": self.epochs,
            "interrupted_after": self.interrupted_after,
            "resumed_from": self.resumed_from,
            "removed": self.removed,
            "best": self.best,
            "best_val_loss": self.best_val_loss,
            "export_url": self.export_url,
            "export_val_loss": self.export_val_loss,
            "versions": [
                {"id": v.version, "step": v.step, "epoch": v.epoch, "metrics": v.metrics, "exports": sorted(v.exports)}
                for v in self.versions
            ],
        }


class _Preempted(Exception):
    """Stands in for a SIGTERM from the cluster scheduler."""


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))


def _data() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2048, 128, generator=gen)
    w = torch.randn(128, 1, generator=gen) / math.sqrt(128)
    y = torch.tanh(x @ w) * 2 + 0.5 * torch.randn(2048, 1, generator=gen)
    # A small, noisy training set: validation loss bottoms out early, so best != latest.
    return x[:512], y[:512], x[1536:], y[1536:]


def _val_loss(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x), y))


def run_demo(
    root: str | os.PathLike[str] = "checkpoints",
    *,
    epochs: int = 6,
    interrupt_after: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    report: Callable[[str], Any] | None = None,
) -> DemoResult:
    """Run the demo under ``root``; refuses a root that holds checkpoints the demo did not write."""
    say = report or log.info
    if epochs < 2:
        raise ValueError("the demo needs at least 2 epochs (one before and one after the interruption)")
    interrupt_after = interrupt_after or max(1, epochs // 2)
    policy = RetentionPolicy(keep_last=2, keep_best=1, metric=METRIC, mode="min")
    mgr = CheckpointManager(root, retention=policy, storage_options=storage_options)
    foreign = [v.version for v in mgr.list() if DEMO_TAG not in v.tags]
    if foreign:
        raise CheckpointError(
            f"{mgr.root_url} holds {len(foreign)} version(s) the demo did not write; its retention policy "
            "would prune them, so choose an empty folder (e.g. `torchckpt demo ./demo-checkpoints`)"
        )
    earlier = len(mgr.list())
    x_train, y_train, x_val, y_val = _data()
    removed: list[str] = []

    say(f"torchckpt demo: Linear(128,16)-ReLU-Linear(16,1) on synthetic data, checkpoints in {mgr.root_url}")
    say(f"retention: keep_last=2 + keep_best=1 by {METRIC} (the newest and pinned versions are always kept)")
    if earlier:
        say(f"found {earlier} version(s) from an earlier demo run; this run adds to them")

    def train(
        start_epoch: int,
        model: nn.Module,
        opt: Any,
        sched: Any,
        shuffle: torch.Generator,
        preempt_after: int | None = None,
    ) -> None:
        steps_per_epoch = math.ceil(len(x_train) / _BATCH)
        for epoch in range(start_epoch, epochs + 1):
            model.train()
            total = 0.0
            for idx in torch.randperm(len(x_train), generator=shuffle).split(_BATCH):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            model.eval()
            val = _val_loss(model, x_val, y_val)
            before = {v.version for v in mgr.list()}
            info = mgr.save(
                epoch * steps_per_epoch,
                epoch=epoch,
                model=model,
                optimizer=opt,
                scheduler=sched,
                metrics={METRIC: val, "train_loss": total / len(x_train)},
                extra={"shuffle_rng": shuffle.get_state()},
                tags=[DEMO_TAG],
            )
            assert isinstance(info, CheckpointInfo)  # a synchronous save in one process
            gone = sorted(before - {v.version for v in mgr.list()})
            removed.extend(gone)
            pruned = f", pruned {len(gone)} old version(s)" if gone else ""
            say(
                f"epoch {epoch}/{epochs}  step {info.step:4d}  train_loss {total / len(x_train):.4f}  "
                f"{METRIC} {val:.4f}  saved {info.version}{pruned}"
            )
            if epoch == preempt_after:
                raise _Preempted

    def fresh(seed: int) -> tuple[nn.Module, Any, Any, torch.Generator]:
        torch.manual_seed(seed)
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=3e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, opt, sched, torch.Generator().manual_seed(seed)

    try:
        train(1, *fresh(0), preempt_after=interrupt_after)
    except _Preempted:
        say(f"-- simulated interruption after epoch {interrupt_after}: the model and optimizer are gone --")

    model, opt, sched, shuffle = fresh(99)  # a new process: different initial weights, nothing carried over
    ckpt = mgr.restore(model=model, optimizer=opt, scheduler=sched)
    shuffle.set_state(ckpt.extra["shuffle_rng"])
    say(
        f"resumed from {ckpt.info.version} (epoch {ckpt.epoch}, step {ckpt.step}, "
        f"{METRIC} {ckpt.metrics[METRIC]:.4f}) into a fresh model and optimizer"
    )
    train(int(ckpt.epoch or 0) + 1, model, opt, sched, shuffle)

    result = DemoResult(str(mgr.root_url), epochs, interrupt_after, ckpt.info.version, [], removed)
    best = mgr.best(METRIC, "min")
    if best is not None:
        result.best, result.best_val_loss = best.version, float(best.metrics[METRIC])
        _export_best(mgr, best, x_val, y_val, result, say)
    result.versions = mgr.list()
    _print_versions(result, say)
    say(f"next: torchckpt list {root} --metric {METRIC}   |   torchckpt show {root} best --metric {METRIC}")
    return result


def _export_best(
    mgr: CheckpointManager,
    best: CheckpointInfo,
    x: torch.Tensor,
    y: torch.Tensor,
    result: DemoResult,
    say: Callable[[str], Any],
) -> None:
    """Export the best version (its weights, not the live model's) and check the artifact reproduces its loss."""
    from .export import load_torchscript

    try:
        url = mgr.export_torchscript(make_model(), version=best)
    except ModuleNotFoundError as exc:
        if "torchckpt.export" not in str(exc):
            raise
        say("export skipped: this torchckpt has no export module yet")
        return
    scripted = load_torchscript(url, storage_options=mgr.storage.storage_options or None)
    result.export_url, result.export_val_loss = url, _val_loss(scripted, x, y)
    same = math.isclose(result.export_val_loss, float(best.metrics[METRIC]), rel_tol=1e-4, abs_tol=1e-6)
    say(f"exported best version {best.version} (epoch {best.epoch}) to TorchScript: {url}")
    say(
        f"the TorchScript module (no Python class needed) gives {METRIC} {result.export_val_loss:.4f} "
        f"on the validation set{' - as recorded at save time' if same else ' - DIFFERS from the recorded value'}"
    )


def _print_versions(result: DemoResult, say: Callable[[str], Any]) -> None:
    from .text import table  # one table format for the whole command line

    latest = result.versions[-1].version if result.versions else None
    rows = []
    for v in result.versions:
        notes = [
            n
            for n, on in (
                ("latest", v.version == latest),
                ("best", v.version == result.best),
                ("resumed from", v.version == result.resumed_from),
            )
            if on
        ]
        if v.exports:
            notes.append("exported")
        rows.append(
            [v.version, str(v.step), str(v.epoch), f"{v.metrics.get(METRIC, float('nan')):.4f}", ", ".join(notes)]
        )
    say("")
    say(f"versions kept in {result.root} ({len(result.removed)} removed by retention during this run):")
    say(table(["ID", "STEP", "EPOCH", METRIC.upper(), "NOTE"], rows))
