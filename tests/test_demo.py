"""``torchckpt demo``: the README's first command works, twice, and refuses a foreign root."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchckpt import CheckpointError, CheckpointManager
from torchckpt.demo import DEMO_TAG, run_demo

HAS_EXPORT = importlib.util.find_spec("torchckpt.export") is not None


def test_demo_cli_then_again_in_process(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("TORCHCKPT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torchckpt", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    root = tmp_path / "checkpoints"  # the default ROOT
    assert doc["root"].endswith(str(root)) and doc["interrupted_after"] == 3
    kept = CheckpointManager(root, read_only=True).list()
    assert [v["id"] for v in doc["versions"]] == [v.version for v in kept]
    # keep_last=2 + keep_best=1: the best epoch survives next to the two newest
    assert [v.epoch for v in kept][-2:] == [5, 6] and len(kept) <= 3
    assert doc["best"] in {v.version for v in kept} and all(DEMO_TAG in v.tags for v in kept)
    assert doc["resumed_from"] and len(doc["removed"]) >= 3
    if HAS_EXPORT:
        assert doc["export_url"] and math.isclose(doc["export_val_loss"], doc["best_val_loss"], rel_tol=1e-4)
        assert any(v["exports"] for v in doc["versions"])

    lines: list[str] = []
    second = run_demo(root, report=lines.append)
    text = "\n".join(lines)
    assert "earlier demo run" in text and "simulated interruption" in text and "resumed from" in text
    assert second.versions[-1].epoch == 6 and len(second.versions) <= 3
    assert CheckpointManager(root).verify().ok
    if HAS_EXPORT:
        assert second.export_url is not None


def test_demo_refuses_a_root_with_other_checkpoints(tmp_path: Path) -> None:
    import torch

    mgr = CheckpointManager(tmp_path / "real")
    mgr.save(1, weights=torch.zeros(3))
    with pytest.raises(CheckpointError, match="did not write"):
        run_demo(tmp_path / "real", report=lambda _: None)
    assert len(mgr.list()) == 1


def test_demo_on_s3(s3_backend) -> None:  # type: ignore[no-untyped-def]
    result = run_demo(s3_backend.url, epochs=2, storage_options=s3_backend.storage_options, report=lambda _: None)
    assert result.interrupted_after == 1 and [v.epoch for v in result.versions][-1] == 2
    if HAS_EXPORT:
        assert result.export_url.startswith("s3://")
        assert math.isclose(result.export_val_loss, result.best_val_loss, rel_tol=1e-4)
