"""The examples run as they are, and stop cleanly on SIGTERM (local disk and S3).

* ``examples/train_loop.py`` gets SIGTERM mid-run: it commits the step it stopped
  at (the step the signal arrived in, or the next one), lists it, exits 0 by its
  own choice, and the version restores bit-exact (the same state as training
  that many steps without interruption); run again, it resumes from there.
* ``examples/ddp.py`` (2 gloo ranks): only rank 1 gets SIGTERM; both ranks save
  the same step, one version is written, and it equals an uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from torchckpt import CheckpointManager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Running:
    """A subprocess whose stdout lines are read by a thread (so the test can wait for one)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )  # a group of its own: see kill()
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match[str]:
        """The first line (seen so far or next) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if m := re.search(pattern, line):
                return m
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()  # never leave a training process running behind a failed test
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout:g} s:\n" + "\n".join(self.lines[-30:])
                ) from None
            if line is None:
                raise AssertionError(f"process ended without {pattern!r}:\n" + "\n".join(self.lines[-30:]))
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m

    def kill(self) -> None:
        """Kill the process and its children (ranks started by mp.spawn): its whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self, timeout: float = 180) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return rc


def _env(backend: Any) -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, **backend.env, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _assert_same_state(a: dict[str, Any], b: dict[str, Any], path: str = "") -> None:
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), path
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}/{i}")
    else:
        assert a == b, path


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_train_loop_sigterm_commits_the_step_it_stopped_at(kind: str, request: pytest.FixtureRequest) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    args = [
        str(EXAMPLES / "train_loop.py"),
        backend.url,
        "--steps",
        "100000",
        "--save-every",
        "100000",
        "--step-delay",
        "0.01",
    ]
    run = Running(args, _env(backend))
    run.wait_for(r"^starting from scratch")
    run.wait_for(r"^step 25 ")
    run.proc.send_signal(signal.SIGTERM)
    done = run.wait_for(r"^preempted: signal arrived during step (\d+); saved step (\d+); exiting 0")
    rc = run.finish()
    signal_step, saved_step = int(done[1]), int(done[2])
    print(
        f"\n[{kind}] train_loop.py: SIGTERM arrived during step {signal_step}, saved step {saved_step}, exit code {rc}"
    )
    assert rc == 0, "\n".join(run.lines[-20:])
    assert 25 <= signal_step <= saved_step <= signal_step + 1
    assert not any("Traceback" in line for line in run.lines)

    mgr = backend.manager()
    assert [v.step for v in mgr.list()] == [saved_step]
    example = _load_example("train_loop")
    model, expected_model = example.make_model(), example.make_model()
    opt, expected_opt = example.make_optimizer(model), example.make_optimizer(expected_model)
    for step in range(saved_step + 1):  # the uninterrupted run, in this process
        example.train_step(expected_model, expected_opt, step)
    ckpt = mgr.restore(model=model, optimizer=opt)
    assert ckpt.step == saved_step
    _assert_same_state(model.state_dict(), expected_model.state_dict())
    _assert_same_state(opt.state_dict(), expected_opt.state_dict())

    again = Running([str(EXAMPLES / "train_loop.py"), backend.url, "--steps", str(saved_step + 4)], _env(backend))
    again.wait_for(rf"^resumed from step {saved_step}$")
    again.wait_for(rf"^step {saved_step + 1} ")  # the next step, not step 0
    assert again.finish() == 0
    assert [v.step for v in mgr.list()] == [saved_step, saved_step + 3]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_ddp_example_sigterm_to_one_rank_saves_the_same_step_on_both(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    args = [
        str(EXAMPLES / "ddp.py"),
        backend.url,
        "--steps",
        "100000",
        "--save-every",
        "100000",
        "--step-delay",
        "0.02",
    ]
    run = Running(args, _env(backend))
    rank1_pid = int(run.wait_for(r"^rank 1 pid (\d+) starts at step 0")[1])
    run.wait_for(r"^rank 1 step 20 ")
    os.kill(rank1_pid, signal.SIGTERM)  # rank 1 only
    stops = {}
    for rank in (0, 1):
        m = run.wait_for(rf"^rank {rank} preempted: signal here during step (-|\d+); saved step (\d+)")
        stops[rank] = (m[1], int(m[2]))
    rc = run.finish()
    saved_step = stops[0][1]
    signal_step = int(stops[1][0])
    print(
        f"\n[{kind}] ddp.py: SIGTERM to rank 1 arrived during step {signal_step}; rank 0 saved step "
        f"{stops[0][1]}, rank 1 saved step {stops[1][1]}; exit code {rc}"
    )
    assert rc == 0, "\n".join(run.lines[-20:])
    assert stops[1][1] == saved_step and stops[0][0] == "-"  # same step; rank 0 never got the signal
    assert 20 <= signal_step <= saved_step <= signal_step + 1
    mgr = backend.manager()
    assert [v.step for v in mgr.list()] == [saved_step]  # one version, written by rank 0
    state = mgr.load()
    assert list(state["model"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # no "module." prefix

    reference = tmp_path / "reference"  # the same training, uninterrupted, ending at the saved step
    ref = Running(
        [str(EXAMPLES / "ddp.py"), str(reference), "--steps", str(saved_step + 1), "--save-every", "100000"],
        _env(backend),
    )
    assert ref.finish() == 0, "\n".join(ref.lines[-20:])
    expected = CheckpointManager(reference).load(saved_step)
    _assert_same_state(state, expected)
