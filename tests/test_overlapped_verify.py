"""Restores hash local files on a worker thread while copying them into the live objects.

The copy may run ahead of the hash, so these tests prove the overlap never lets a
damaged byte through: a flipped byte at the start of the first tensor, inside a
middle one and at the end of the last one is reported, and ``fallback=True`` then
restores the older version exactly over whatever the failed attempt wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchckpt import CheckpointManager, ChecksumMismatchError


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.ParameterList(torch.nn.Parameter(torch.randn(70_000)) for _ in range(9))


def _data_file(root: Path, version: str, fmt: str) -> Path:
    folder = root / "versions" / version
    return folder / ("model.safetensors" if fmt == "safetensors" else "state.pt")


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_anywhere_is_detected_and_fallback_restores_exactly(tmp_path: Path, fmt: str, where: str) -> None:
    root = tmp_path / "ck"
    mgr = CheckpointManager(root, format=fmt)
    old, new = _net(1), _net(2)
    mgr.save(1, model=old)
    info = mgr.save(2, model=new)
    path = _data_file(root, info.version, fmt)
    data = bytearray(path.read_bytes())
    params = list(new.parameters())
    target = {"first": params[0], "middle": params[4], "last": params[-1]}[where]
    raw = target.detach().numpy().tobytes()
    start = bytes(data).find(raw)
    assert start >= 0
    offset = {"first": start, "middle": start + len(raw) // 2, "last": start + len(raw) - 1}[where]
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))

    live = _net(3)
    with pytest.raises(ChecksumMismatchError):
        mgr.restore(model=live)
    with pytest.warns(UserWarning, match="unusable"):
        ckpt = mgr.restore(model=live, fallback=True)
    assert ckpt.step == 1
    for got, want in zip(live.parameters(), old.parameters(), strict=True):
        assert torch.equal(got, want)


def test_a_sound_version_restores_exactly_and_leaves_no_check_behind(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ck")
    saved = _net(5)
    mgr.save(1, model=saved)
    live = _net(6)
    for _ in range(3):  # repeated restores: every deferred check is awaited before restore returns
        mgr.restore(model=live)
        for got, want in zip(live.parameters(), saved.parameters(), strict=True):
            assert torch.equal(got, want)


def test_a_loading_error_on_sound_bytes_is_not_a_fallback(tmp_path: Path) -> None:
    """A strict key mismatch is the caller's, not damage: raised as is, no older version tried."""
    mgr = CheckpointManager(tmp_path / "ck")
    mgr.save(1, model=_net(1))
    mgr.save(2, model=_net(2))
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key|size mismatch"):
        mgr.restore(model=torch.nn.Linear(3, 3), fallback=True)
