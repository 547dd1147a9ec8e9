"""A training loop that saves on a schedule, saves at the next step after a preemption signal, and resumes.

    python examples/train_loop.py /tmp/run             # local disk
    python examples/train_loop.py s3://bucket/run      # S3: credentials and AWS_ENDPOINT_URL from the environment
    TORCHCKPT_ROOT=s3://bucket/run python examples/train_loop.py

Stop it with ``kill -TERM <pid>`` (what Kubernetes, SLURM and spot instances send):
it saves at the next step boundary and exits 0. Run it again: it resumes from
the step it saved. Runs as it is on a CPU in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch
from torch import nn

from torchckpt import CheckpointManager, RetentionPolicy


def make_model() -> nn.Module:
    """The model, with the same initial weights in every run."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model's parameters."""
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    """One step on the batch of ``step`` (each step's batch comes from its own seed, so a resume is exact)."""
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(8, 16, generator=gen)
    y = x.sum(dim=1, keepdim=True)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item())


def main(argv: list[str] | None = None) -> int:
    """Train ``--steps`` steps under ROOT, resuming from its latest version; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "root",
        nargs="?",
        default=os.environ.get("TORCHCKPT_ROOT", "checkpoints"),
        help="checkpoint root: a path or URL (default: $TORCHCKPT_ROOT or ./checkpoints)",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-every", type=int, default=50, help="save every N steps")
    parser.add_argument("--save-every-seconds", type=float, default=None, help="also save every T seconds")
    parser.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (to watch it, or kill it)")
    args = parser.parse_args(argv)

    # Your own handler keeps working: the manager's handler chains to it. Here it notes when the signal came.
    now = {"step": -1}
    signal_steps: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signal_steps.append(now["step"]))

    model = make_model()
    opt = make_optimizer(model)
    with CheckpointManager(
        args.root,
        retention=RetentionPolicy(keep_last=3),
        save_every_steps=args.save_every,
        save_every_seconds=args.save_every_seconds,
        preemption_signals=(signal.SIGTERM, signal.SIGUSR1),
    ) as mgr:
        ckpt = mgr.restore(model=model, optimizer=opt, missing_ok=True)  # None on a fresh root
        start = ckpt.step + 1 if ckpt else 0
        print(f"resumed from step {ckpt.step}" if ckpt else "starting from scratch", flush=True)
        for step in range(start, args.steps):
            now["step"] = step
            loss = train_step(model, opt, step)
            print(f"step {step} loss {loss:.6f}", flush=True)
            info = mgr.maybe_save(step, model=model, optimizer=opt, metrics={"loss": loss})
            if info is not None:
                print(f"saved step {step}", flush=True)
            if mgr.preempted:  # set by the should_save that saw the signal: that step is saved
                arrived = signal_steps[0] if signal_steps else "?"
                print(f"preempted: signal arrived during step {arrived}; saved step {step}; exiting 0", flush=True)
                return 0
            time.sleep(args.step_delay)
        latest = mgr.latest()
        if start < args.steps and (latest is None or latest.step != args.steps - 1):
            mgr.save(args.steps - 1, model=model, optimizer=opt)  # the final state
        print(f"done: {args.steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
