"""Accelerate ``save_state`` / ``load_state`` round trips through folder versions."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from torchckpt import RetentionPolicy
from torchckpt.integrations.accelerate import load_state, save_state


def train_step(accelerator, model, opt) -> None:
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    accelerator.backward(loss)
    opt.step()
    opt.zero_grad()


def test_save_state_load_state_round_trip(backend, tmp_path):
    mgr = backend.manager(retention=RetentionPolicy(keep_last=2))
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(tmp_path / "proj"), automatic_checkpoint_naming=True, total_limit=1
        ),
    )
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    model, opt = accelerator.prepare(net, torch.optim.Adam(net.parameters(), lr=0.1))
    infos = []
    for step in range(3):
        train_step(accelerator, model, opt)
        infos.append(save_state(accelerator, mgr, step + 1, metrics={"loss": 1.0 / (step + 1)}))
    assert [i.name for i in infos] == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert [v.name for v in mgr.list()] == ["checkpoint_1", "checkpoint_2"]  # Accelerate kept 1 local folder
    assert {"model.safetensors", "optimizer.bin"} <= set(infos[-1].files)
    weights = model.weight.detach().clone()
    opt_state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items() if torch.is_tensor(v)}

    train_step(accelerator, model, opt)  # move away from the saved state
    assert not torch.equal(model.weight, weights)
    info = load_state(accelerator, mgr, "latest", local_dir=tmp_path / "restore")
    assert info.name == "checkpoint_2"
    assert torch.equal(model.weight, weights)
    for k, v in opt.state_dict()["state"][0].items():
        if torch.is_tensor(v):
            assert torch.equal(v, opt_state[k]), k
    # an older version by its name
    load_state(accelerator, mgr, "checkpoint_1", local_dir=tmp_path / "older")
    assert not torch.equal(model.weight, weights)
