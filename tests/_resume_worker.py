"""A training loop for the exact-resume tests, run as a fresh process per phase.

    python _resume_worker.py MODE ROOT OPTIONS_JSON PHASE

MODE: ``stateful`` (torchdata's StatefulDataLoader, saved by name) or ``sampler``
(a plain DataLoader with ``ResumableSampler`` and 2 worker processes, the
documented recipe). PHASE: ``straight`` (12 steps), ``first`` (6 steps, then
save) or ``second`` (restore, then the remaining steps). Prints the losses as
a JSON list of float hex strings. Model with dropout, AdamW, OneCycleLR, a CPU
GradScaler, a seeded shuffling loader; only documented API.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchckpt import CheckpointManager
from torchckpt.training import ResumableSampler

TOTAL, SAVE_AFTER, BATCH = 12, 6, 4  # 40 samples: 10 batches per epoch, the resume is mid-epoch 0


def main(mode: str, root: str, options: dict[str, Any], phase: str) -> list[str]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(123)
    data = TensorDataset(torch.randn(40, 8, generator=gen), torch.randn(40, 1, generator=gen))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=TOTAL)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    if mode == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader
        from torchdata.stateful_dataloader.sampler import RandomSampler

        # the documented form: the shuffling sampler owns its generator (see docs/training-loops.md)
        loader: Any = StatefulDataLoader(
            data,
            batch_size=BATCH,
            generator=torch.Generator().manual_seed(8),
            sampler=RandomSampler(data, generator=torch.Generator().manual_seed(7)),
        )
        position: Any = loader
        epochs = lambda: iter(loader)  # noqa: E731 - one pass per call; resumes mid-epoch after a restore
    else:
        sampler = ResumableSampler(data, seed=7)
        loader = DataLoader(data, batch_size=BATCH, sampler=sampler, num_workers=2)
        position = sampler
        epochs = lambda: sampler.batches(loader)  # noqa: E731

    mgr = CheckpointManager(root, storage_options=options or None)
    step = 0
    if phase == "second":
        ckpt = mgr.restore(model=model, optimizer=opt, scheduler=sched, scaler=scaler, data=position, restore_rng=True)
        step = ckpt.step + 1
    stop = SAVE_AFTER if phase == "first" else TOTAL
    losses: list[str] = []
    while step < stop:
        for x, y in epochs():
            model.train()
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.item()).hex())
            if step == SAVE_AFTER - 1 and phase == "first":
                mgr.save(step, model=model, optimizer=opt, scheduler=sched, scaler=scaler, data=position)
            step += 1
            if step >= stop:
                break
    return losses


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])))
