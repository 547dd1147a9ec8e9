"""GPU checks to run on a machine with CUDA (the device tool's machine), in one go.

1. A checkpoint saved from ``cuda:0`` (model + Adam state, sync and async with
   pinned staging buffers) restores with no arguments in a child process that
   sees no GPU (``CUDA_VISIBLE_DEVICES=""``): every tensor lands on the CPU and
   equals what was saved.
2. The async snapshot is consistent: the CUDA tensors are mutated right after
   ``save(blocking=False)`` returns; the committed version holds the old values.
3. On the GPU machine itself, the default restore keeps tensors on ``cuda:0``.

    python benchmarks/gpu_check.py [ROOT]      # prints one line per check, exit 1 on failure
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch

from torchckpt import CheckpointManager

CHILD = r"""
import sys, torch
from torchckpt import CheckpointManager
assert not torch.cuda.is_available(), "child must see no GPU"
root, expect_path = sys.argv[1], sys.argv[2]
expected = torch.load(expect_path, weights_only=True)
for version in ("sync", "async"):
    mgr = CheckpointManager(root, read_only=True)
    info = next(v for v in reversed(mgr.list()) if version in v.tags)
    net = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters())
    mgr.restore(info, model=net, optimizer=opt)          # no map_location at all
    for k, v in net.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, expected[version][k]), (version, k)
    assert all(s["exp_avg"].device.type == "cpu" for s in opt.state.values())
    print(f"ok: {version} cuda:0 checkpoint restored on a CPU-only process")
"""


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here: run this on the GPU machine")
        return 2
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gpu-check-")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).cuda()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(8, 128, device="cuda")).sum().backward()
    opt.step()
    mgr = CheckpointManager(root)
    expected = {"sync": {k: v.cpu().clone() for k, v in net.state_dict().items()}}
    mgr.save(1, model=net, optimizer=opt, tags=["sync"])
    expected["async"] = {k: v.cpu().clone() for k, v in net.state_dict().items()}
    fut = mgr.save(2, model=net, optimizer=opt, tags=["async"], blocking=False)
    with torch.no_grad():  # training goes on at once: the snapshot must not see this
        for p in net.parameters():
            p.add_(1.0)
    fut.result()
    mgr.close()
    state = CheckpointManager(root).load(2)
    for k, v in state["model"].items():
        assert v.device.type == "cuda", f"default restore moved {k} off an available GPU"
        assert torch.equal(v.cpu(), expected["async"][k]), f"async snapshot saw a later write to {k}"
    print("ok: async snapshot consistent; default restore keeps tensors on cuda:0")
    expect_path = os.path.join(tempfile.mkdtemp(), "expected.pt")
    torch.save(expected, expect_path)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", CHILD, root, expect_path], env=env)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
