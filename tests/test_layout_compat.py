"""Versions written by torchckpt 0.1.0 (before the storage/formats refactor) load with today's code.

``tests/data/legacy-0.1.0`` was written by ``tests/data/make_legacy_root.py`` at commit 0e23008:
a torch-format version (pinned, with an export), a ``whole_model=True`` version, a safetensors
version and a sharded (DCP) version, all of the same seeded model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchckpt
from torchckpt import CheckpointManager
from torchckpt.summary import tensor_summary

LEGACY = Path(__file__).parent / "data" / "legacy-0.1.0"


def _reference() -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer exactly as make_legacy_root.py built them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    return net, opt


def _fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture
def legacy(tmp_path: Path) -> CheckpointManager:
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    return CheckpointManager(root)


def _same(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_listing_and_verify(legacy: CheckpointManager) -> None:
    versions = legacy.list()
    assert [v.step for v in versions] == [1, 2, 3, 4]
    assert [v.format for v in versions] == ["torch", "torch", "safetensors", "torch"]
    assert [v.layout for v in versions] == ["single", "single", "single", "dcp"]
    assert versions[0].pinned and versions[0].tags == ("first",) and "model.pt" in versions[0].exports
    assert legacy.best("val_loss").step == 4
    report = legacy.verify()
    assert report.ok, report.problems
    assert len(report.checked) == 4


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_every_version_restores_bit_exact(legacy: CheckpointManager, step: int) -> None:
    ref_net, ref_opt = _reference()
    net, opt = _fresh()
    ckpt = legacy.restore(step, model=net, optimizer=opt) if step != 2 else legacy.restore(step, model=net)
    _same(net, ref_net)
    if step != 2:
        momentum = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
        expected = [s["momentum_buffer"] for s in ref_opt.state_dict()["state"].values()]
        assert all(torch.equal(a, b) for a, b in zip(momentum, expected))
    if step == 1:
        assert ckpt.extra["note"] == "torch" and torch.equal(ckpt.extra["t"], torch.arange(3))


def test_whole_model_export_and_summaries(legacy: CheckpointManager) -> None:
    ref_net, _ = _reference()
    _same(legacy.load_model(2, trust_pickle=True), ref_net)
    url = legacy.storage.url(f"exports/{legacy.info(1).version}/model.pt")
    scripted = torchckpt.load_torchscript(url)
    x = torch.randn(2, 4)
    assert torch.equal(scripted(x), ref_net(x))
    for step in (1, 3, 4):
        names = {row.name for row in tensor_summary(legacy, step)}
        assert {"model.0.weight", "model.2.bias"} <= names


def test_new_versions_append_to_a_legacy_root(legacy: CheckpointManager, tmp_path: Any) -> None:
    net, _ = _reference()
    info = legacy.save(5, model=net)
    assert [v.step for v in legacy.list()] == [1, 2, 3, 4, 5]
    assert legacy.latest() == info
    dst = CheckpointManager(tmp_path / "copy")
    from torchckpt.transfer import copy_versions

    copy_versions(legacy, dst)
    assert dst.verify().ok and [v.step for v in dst.list()] == [1, 2, 3, 4, 5]
