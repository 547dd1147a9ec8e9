"""Exact mid-epoch resume: 12 steps straight vs 6 steps + restore in a fresh process + 6 steps.

A model with dropout, AdamW, OneCycleLR, a CPU GradScaler and a seeded shuffling
loader (``_resume_worker.py``); the resume point is mid-epoch and the run crosses
an epoch boundary afterwards. Losses must be bit-identical, once with torchdata's
``StatefulDataLoader`` saved by name, once with a plain ``DataLoader`` and
``ResumableSampler`` (2 worker processes prefetching ahead of the loop).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("_resume_worker.py")


def _run(mode: str, backend: Any, phase: str) -> list[str]:
    env = {**os.environ, **backend.env, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, backend.url, json.dumps(backend.storage_options), phase],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("mode", ["stateful", "sampler"])
def test_resume_mid_epoch_is_bit_identical(mode: str, kind: str, request: pytest.FixtureRequest) -> None:
    if mode == "stateful":
        pytest.importorskip("torchdata.stateful_dataloader")
    backend = request.getfixturevalue(f"{kind}_backend")
    straight = _run(mode, backend.sub("straight"), "straight")
    first = _run(mode, backend.sub("resumed"), "first")
    second = _run(mode, backend.sub("resumed"), "second")
    assert len(straight) == 12 and len(first) == 6 and len(second) == 6
    assert first == straight[:6]
    assert second == straight[6:], f"resumed losses differ: {second} vs {straight[6:]}"
    assert len(set(straight)) == 12  # the losses really change step to step (nothing trivially equal)
