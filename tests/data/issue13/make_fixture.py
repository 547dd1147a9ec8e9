"""Writes tests/data/issue13/root-efad6af with the release before per-object files (commit efad6af).

Run from a checkout of that commit: ``PYTHONPATH=<efad6af>/src python make_fixture.py <out>``.
Two versions: torch format (model + optimizer + extra in one state.pt), safetensors format.
Values are deterministic (seeded) so the test rebuilds the expected tensors.
"""

from __future__ import annotations

import sys

import torch

from torchckpt import CheckpointManager


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(13)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return model, opt


if __name__ == "__main__":
    out = sys.argv[1]
    model, opt = build()
    CheckpointManager(f"{out}/torch").save(1, model=model, optimizer=opt, extra={"note": "efad6af"})
    CheckpointManager(f"{out}/safetensors", format="safetensors").save(1, model=model, optimizer=opt)
