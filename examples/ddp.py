"""Data-parallel training (DistributedDataParallel, 2 CPU ranks over gloo) that saves, survives SIGTERM and resumes.

    python examples/ddp.py /tmp/run                          # starts 2 ranks itself
    torchrun --nproc-per-node 2 examples/ddp.py /tmp/run     # or let torchrun start them
    python examples/ddp.py s3://bucket/run                   # any fsspec URL (S3: endpoint from the environment)

Every rank calls ``restore``, ``maybe_save`` and checks ``preempted``: rank 0
writes one version per save (the DDP wrapper's keys are stored without
``module.``), the other ranks return at once. A SIGTERM sent to any one rank
makes every rank save the same step and stop. The data order resumes
mid-epoch through ``ResumableSampler`` (each rank its share). Run it again to resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from torchckpt import CheckpointManager, RetentionPolicy
from torchckpt.training import ResumableSampler

WORLD = 2


def say(line: str) -> None:
    """Print one line with a single write: the ranks share stdout, and print() writes the newline apart."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_model() -> nn.Module:
    """The bare model (the same initial weights on every rank)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def make_dataset() -> TensorDataset:
    """A small regression data set (the same on every rank)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


def train(rank: int, world: int, root: str, steps: int, save_every: int, step_delay: float) -> None:
    """One rank's loop (the process group is already up)."""
    now = {"step": -1}
    signal_steps: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signal_steps.append(now["step"]))  # chained to

    model = DDP(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = make_dataset()
    sampler = ResumableSampler(data, seed=0, num_replicas=world, rank=rank)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    mgr = CheckpointManager(
        root, retention=RetentionPolicy(keep_last=3), save_every_steps=save_every, preemption_signals=(signal.SIGTERM,)
    )
    ckpt = mgr.restore(model=model, optimizer=opt, sampler=sampler, missing_ok=True)  # every rank reads
    step = ckpt.step + 1 if ckpt else 0
    say(f"rank {rank} pid {os.getpid()} starts at step {step}")
    try:
        while step < steps:
            for x, y in sampler.batches(loader):
                now["step"] = step
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()  # DDP averages the gradients over the ranks
                opt.step()
                say(f"rank {rank} step {step} loss {loss.item():.6f}")
                mgr.maybe_save(step, model=model, optimizer=opt, sampler=sampler)  # rank 0 writes
                if mgr.preempted:  # every rank sees it at the same step, whichever rank got the signal
                    arrived = signal_steps[0] if signal_steps else "-"
                    say(f"rank {rank} preempted: signal here during step {arrived}; saved step {step}")
                    return
                step += 1
                if step >= steps:
                    break
                time.sleep(step_delay)
        latest = mgr.latest() if rank == 0 else None
        if latest is None or latest.step != steps - 1:
            mgr.save(steps - 1, model=model, optimizer=opt, sampler=sampler)  # the final state (rank 0 writes)
        say(f"rank {rank} done at step {steps - 1}")
    finally:
        mgr.close()


def _spawned(rank: int, init_file: str, args: argparse.Namespace) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        train(rank, WORLD, args.root, args.steps, args.save_every, args.step_delay)
        dist.barrier()  # leave together: a rank tearing down its group while another still uses it may abort
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Start 2 ranks (or join torchrun's); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=os.environ.get("TORCHCKPT_ROOT", "checkpoints"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # started by torchrun: one process per rank, the group from the environment
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
        try:
            train(dist.get_rank(), dist.get_world_size(), args.root, args.steps, args.save_every, args.step_delay)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(os.path.join(tmp, "pg-init"), args), nprocs=WORLD, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
