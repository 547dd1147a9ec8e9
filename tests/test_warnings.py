"""No Python warning on the happy path: ``torchckpt demo`` and ``torchckpt list`` print none.

Each command runs in a fresh interpreter, as a user runs it, with warnings that come from torchckpt's own
modules turned into errors (the ``-W error`` semantics for our code paths: a torch warning that our call
triggers is attributed to our frame and fails too) and Python's default filters for everything else; any
warning that would reach the user's terminal then fails the test from the captured output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

# ``python -m torchckpt ARGS`` with an error filter for torchckpt's modules installed before anything is imported.
RUNNER = r"""
import runpy, sys, warnings
warnings.filterwarnings("error", category=Warning, module=r"torchckpt(\.|$)")
sys.argv = ["torchckpt", *sys.argv[1:]]
runpy.run_module("torchckpt", run_name="__main__", alter_sys=True)
"""

# what warnings.showwarning prints: "path:line: SomeWarning: message"
_WARNING_LINE = re.compile(r"\b\w*Warning: ")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"TORCHCKPT_DEBUG", "PYTHONWARNINGS"}}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchckpt {' '.join(args)} exited {proc.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    warned = [line for line in output.splitlines() if _WARNING_LINE.search(line)]
    assert not warned, f"torchckpt {' '.join(args)} printed warnings:\n" + "\n".join(warned)
    return proc


def test_demo_and_list_print_no_warnings(tmp_path: Path) -> None:
    demo = run_cli("demo", cwd=tmp_path)
    assert "versions kept in" in demo.stdout
    listed = run_cli("list", "checkpoints", "--metric", "val_loss", cwd=tmp_path)
    assert "latest" in listed.stdout


def test_runner_turns_our_warnings_into_errors(tmp_path: Path) -> None:
    """The filter above does catch a warning raised in a torchckpt module (and only there)."""
    code = RUNNER.split("sys.argv", 1)[0] + (
        "import warnings, torchckpt.cli as cli\n"
        "warnings.warn('elsewhere', UserWarning)  # __main__: shown, not an error\n"
        "exec(compile('import warnings; warnings.warn(\"ours\", UserWarning)', cli.__file__, 'exec'), vars(cli))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "UserWarning: ours" in proc.stderr, proc.stderr[-2000:]
    assert "UserWarning: elsewhere" in proc.stderr


def test_numpy_is_a_runtime_dependency() -> None:
    """Without numpy torch warns "Failed to initialize NumPy" on the demo's path: numpy is a real dependency."""
    declared = requires("torchckpt") or []
    if not any(re.match(r"numpy\b", r) for r in declared):
        pytest.fail(f"the installed torchckpt does not require numpy (reinstall with pip install -e .): {declared}")
    assert any(re.match(r"numpy\b", r) and "extra ==" not in r for r in declared), declared
