"""Async saves with ``overlap_snapshot=True``: optimizers' tensors are copied in the background (CheckFreq).

The copy is slowed down here so that training really runs while it is in progress:
the next optimizer step must wait for it, the version must hold exactly the state
at the ``save`` call, and a change made outside an optimizer step must fail the save
instead of storing a torn state.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from torchckpt import CheckpointManager
from torchckpt.errors import AsyncSaveError, SnapshotChangedError
from torchckpt.staging import LaterCopies


def _trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 64)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _clone(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[int, Any]]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
    )


@pytest.fixture
def slow_copies(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background copies start only after training went on (and record that they ran)."""
    started = threading.Event()
    original = LaterCopies.run

    def run(self: LaterCopies) -> None:
        started.set()
        time.sleep(0.3)
        original(self)

    monkeypatch.setattr(LaterCopies, "run", run)
    return started


def test_optimizer_step_waits_and_version_holds_the_state_at_the_call(tmp_path: Path, slow_copies: Any) -> None:
    model, opt = _trained()
    want_model, want_opt = _clone(model, opt)
    with CheckpointManager(tmp_path / "ck", overlap_snapshot=True) as mgr:
        fut = mgr.save(5, blocking=False, model=model, optimizer=opt)
        assert slow_copies.wait(5)
        # the next iteration: forward (BatchNorm statistics change), backward, step (everything changes)
        opt.zero_grad()
        model(torch.randn(8, 64)).pow(2).mean().backward()
        opt.step()  # must wait for the background copy
        info = fut.result()
        state = mgr.load(info)
    for key, value in want_model.items():
        assert torch.equal(state["model"][key], value), key
    for i, s in want_opt.items():
        for key, value in s.items():
            assert torch.equal(state["optimizer"]["state"][i][key], value), (i, key)
    assert not torch.equal(model[0].weight, want_model["0.weight"])  # training did move on


def test_a_change_outside_an_optimizer_step_fails_the_save(tmp_path: Path, slow_copies: Any) -> None:
    model, opt = _trained()
    with CheckpointManager(tmp_path / "ck", overlap_snapshot=True) as mgr:
        mgr.save(5, blocking=False, model=model, optimizer=opt)
        assert slow_copies.wait(5)
        with torch.no_grad():
            model[0].weight.add_(1.0)  # not an optimizer step: nothing waits for the copy
        with pytest.raises(AsyncSaveError) as err:
            mgr.wait()
        assert isinstance(err.value.__cause__, SnapshotChangedError)
        assert mgr.list() == []  # nothing torn was committed


def test_without_overlap_every_tensor_is_copied_before_save_returns(tmp_path: Path, slow_copies: Any) -> None:
    model, opt = _trained()
    want_model, _ = _clone(model, opt)
    with CheckpointManager(tmp_path / "ck") as mgr:
        fut = mgr.save(5, blocking=False, model=model, optimizer=opt)
        with torch.no_grad():
            model[0].weight.add_(1.0)
        state = mgr.load(fut.result())
    assert torch.equal(state["model"]["0.weight"], want_model["0.weight"])


def test_restore_waits_for_the_background_copy(tmp_path: Path, slow_copies: Any) -> None:
    model, opt = _trained()
    want_model, _ = _clone(model, opt)
    with CheckpointManager(tmp_path / "ck", overlap_snapshot=True) as mgr:
        mgr.save(1, model=_trained(7)[0])
        fut = mgr.save(5, blocking=False, model=model, optimizer=opt)
        assert slow_copies.wait(5)
        mgr.restore(1, model=model)  # overwrites the parameters: only after the copy
        state = mgr.load(fut.result())
    assert torch.equal(state["model"]["0.weight"], want_model["0.weight"])
