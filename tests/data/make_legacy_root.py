"""Writes tests/data/legacy-0.1.0/: a small root written by torchckpt 0.1.0 (commit 0e23008).

Run from a checkout of that release (``PYTHONPATH=<old checkout>/src python make_legacy_root.py OUT``);
``tests/test_layout_compat.py`` loads the result with the current code. Kept tiny (a few KB).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from torchckpt import CheckpointManager


def main(out: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    mgr = CheckpointManager(out)
    mgr.save(
        1,
        model=net,
        optimizer=opt,
        epoch=0,
        metrics={"val_loss": 0.5},
        extra={"note": "torch", "t": torch.arange(3)},
        tags=["first"],
    )
    mgr.pin(1)
    mgr.save(2, model=net, whole_model=True, metrics={"val_loss": 0.4})
    CheckpointManager(out, format="safetensors").save(3, model=net, optimizer=opt, metrics={"val_loss": 0.3})
    CheckpointManager(out, distributed=True).save(4, model=net, optimizer=opt, metrics={"val_loss": 0.2})
    mgr.export_torchscript(net, version=1)


if __name__ == "__main__":
    main(sys.argv[1])
