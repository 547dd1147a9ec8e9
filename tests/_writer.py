"""A "zygote" that imports torch once and forks writer processes on request.

Crash and concurrency tests need many short-lived writer processes that can be
killed with SIGKILL at any moment. Importing torch costs seconds, so this
process imports it once and then, for each JSON command read from stdin, forks
a child that runs one job and exits with ``os._exit``. Protocol (one line each):

* ``{"cmd": "fork", "job": {...}}`` -> ``{"pid": N}``: the child runs ``run_job(job)``.
* ``{"cmd": "wait", "pid": N}`` -> ``{"pid": N, "status": S}``: reaps the child
  (``S`` is its exit code, or ``-signal`` when it was killed).
* ``{"cmd": "quit"}``.

The saved tensors are a deterministic function of the step (``tensors_for``),
so a checker can recompute exactly what each version must hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import warnings
from typing import Any

import torch

import torchckpt
from torchckpt import CheckpointManager, RetentionPolicy

SIZES = (256, 4096, 65536)


def tensors_for(step: int) -> dict[str, torch.Tensor]:
    """What version ``step`` holds: bit-exactly reproducible from the step alone.

    The size depends on the thousand the step is in, so kill rounds (which start at
    multiples of 1000) vary how long a save takes and where a kill lands.
    """
    numel = SIZES[(step // 1000) % len(SIZES)]
    g = torch.Generator().manual_seed(1000 + step)
    return {
        "w": torch.randn(numel, generator=g),
        "b": torch.arange(64, dtype=torch.int64) * step,
        "h": torch.randn(numel // 4, generator=g).to(torch.float16),
    }


def manager(job: dict[str, Any], **kwargs: Any) -> CheckpointManager:
    return CheckpointManager(job["root"], storage_options=job.get("storage_options") or None, **kwargs)


def run_job(job: dict[str, Any]) -> int:
    kind = job["kind"]
    os.environ.update(job.get("env") or {})
    progress = open(job["progress"], "a", buffering=1) if job.get("progress") else None  # noqa: SIM115 (closed at exit)
    retention = RetentionPolicy(keep_last=job["keep_last"]) if job.get("keep_last") else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr = manager(job, retention=retention)
    if job.get("warnings_out"):  # what the manager warned about, one "Category: message" a line
        with open(job["warnings_out"], "w") as f:
            f.writelines(f"{w.category.__name__}: {w.message}\n" for w in caught)
    if kind == "saves":  # save steps start, start+1, ... (count of them, or forever)
        step, end = int(job["start"]), (int(job["start"]) + int(job["count"]) if job.get("count") else None)
        while end is None or step < end:
            info = mgr.save(step, model=tensors_for(step), metrics={"loss": 1.0 / (step + 1)})
            if job.get("check_after_save"):  # the just-committed version must survive a concurrent prune
                state = mgr.load(info.version)
                for name, want in tensors_for(step).items():
                    if not torch.equal(state["model"][name], want):
                        raise AssertionError(f"{info.version}: {name} differs right after save")
            if progress:
                progress.write(f"{step} {info.version}\n")
            step += 1
        return 0
    if kind == "prune_loop":  # prune (and gc with a grace period) until a stop file appears
        policy = RetentionPolicy(keep_last=int(job.get("prune_keep_last", 1)))
        rounds = 0
        while not os.path.exists(job["stop"]) or rounds < 3:
            removed = mgr.prune(policy)
            mgr.gc(older_than=float(job.get("gc_grace", 600)))
            if progress:
                progress.write(" ".join(v.version for v in removed) + "\n")
            rounds += 1
        return 0
    raise ValueError(f"unknown job kind {kind!r}")


# ----- the test side: driving the zygote and checking a root after a kill ---------------------------
class Zygote:
    """Client of a ``_writer.py`` process (started once per test module)."""

    def __init__(self, env: dict[str, str] | None = None, stderr_path: str | None = None) -> None:
        import subprocess

        self._stderr = open(stderr_path or os.devnull, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
        hello = self._read()
        assert hello.get("ready"), hello

    def _send(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"writer zygote died (exit {self.proc.poll()})")
        return json.loads(line)

    def fork(self, job: dict[str, Any]) -> int:
        return int(self._send({"cmd": "fork", "job": job})["pid"])

    def wait(self, pid: int) -> int:
        """Reap a child; its exit code, or minus the signal that ended it."""
        return int(self._send({"cmd": "wait", "pid": pid})["status"])

    def kill(self, pid: int) -> int:
        import signal

        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # already exited (and not yet reaped)
            pass
        return self.wait(pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def assert_version_ok(mgr: CheckpointManager, info: Any) -> None:
    """The version loads (checksums verified) and holds exactly what step ``info.step`` saved."""
    state = mgr.load(info.version)
    want = tensors_for(info.step)
    got = state["model"]
    assert set(got) == set(want), (info.version, sorted(got))
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), (info.version, name)


def root_entries(mgr: CheckpointManager) -> tuple[list[str], list[str], list[str]]:
    """(committed version folders, folders without meta.json or staging, stray temp files in the root)."""
    from torchckpt import manifest as mf

    committed, leftovers = mf.committed_ids(mgr.storage)
    strays = [n for n in mgr.storage.list_names("") if n.endswith(".tmp")]
    return committed, leftovers, strays


class Tally:
    """What a kill campaign saw; printed by the stress script."""

    def __init__(self) -> None:
        self.kills = 0
        self.saves_returned = 0
        self.versions_checked = 0
        self.leftovers_removed = 0
        self.strays_removed = 0
        self.orphans_relisted = 0
        self.saves_after_kill = 0
        self.failures: list[str] = []

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


def check_after_kill(mgr: CheckpointManager, progress_path: str | None, tally: Tally, *, step: int) -> None:
    """Every invariant the crash tests promise, checked right after a writer was SIGKILLed."""
    versions = mgr.list()
    listed = {v.version for v in versions}
    committed, leftovers, _strays = root_entries(mgr)
    # 1. only complete versions are listed, and each holds exactly what was saved
    assert listed <= set(committed), f"listed but not committed: {sorted(listed - set(committed))}"
    for info in versions:
        assert_version_ok(mgr, info)
        tally.versions_checked += 1
    # 2. a save that returned is never lost (the newest returned one survives any retention)
    if progress_path and os.path.exists(progress_path):
        with open(progress_path) as f:
            lines = [ln.split() for ln in f.read().splitlines() if ln.strip()]
        tally.saves_returned += len(lines)
        if lines:
            assert lines[-1][1] in listed, f"save of {lines[-1][1]} returned but it is not listed"
    # 3. the manager keeps working
    info = mgr.save(step, model=tensors_for(step))
    assert mgr.latest() is not None and mgr.latest().version == info.version
    assert_version_ok(mgr, info)
    tally.saves_after_kill += 1
    # 4. gc removes every leftover
    removed = mgr.gc(older_than=0)
    tally.leftovers_removed += sum(1 for r in removed if r.startswith("versions/"))
    tally.strays_removed += sum(1 for r in removed if r.endswith(".tmp"))
    committed, leftovers, strays = root_entries(mgr)
    assert leftovers == [] and strays == [], (leftovers, strays)
    assert not [n for n in mgr.storage.list_names("versions") if n.startswith(".tmp-")]
    assert {v.version for v in mgr.list()} <= set(committed)


def check_repair(mgr: CheckpointManager, tally: Tally) -> None:
    """After the campaign: repair lists every committed version, and each of them is intact."""
    before = {v.version for v in mgr.list()}
    versions = mgr.repair()
    committed, leftovers, _ = root_entries(mgr)
    assert {v.version for v in versions} == set(committed) and not leftovers
    tally.orphans_relisted += len({v.version for v in versions} - before)
    for info in versions:
        assert_version_ok(mgr, info)


def warm_up() -> None:
    """Run one save and load here, so forked children start with every lazy import done."""
    import shutil
    import tempfile

    torch.set_num_threads(1)  # no intra-op thread pool alive across fork()
    with contextlib.suppress(ImportError):
        import s3fs  # noqa: F401  (import only: no event loop thread before fork)
    folder = tempfile.mkdtemp(prefix="torchckpt-warmup-")
    try:
        mgr = CheckpointManager(folder, retention=RetentionPolicy(keep_last=1))
        for step in range(2):
            mgr.save(step, model=tensors_for(step), metrics={"loss": 1.0})
        mgr.load()
        mgr.gc(older_than=0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    warm_up()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "torchckpt": torchckpt.__version__}) + "\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "fork":
            out.flush()
            pid = os.fork()
            if pid == 0:  # child: run the job, never return into this loop
                code = 1
                try:
                    sys.stdin.close()
                    code = run_job(msg["job"])
                except BaseException:
                    traceback.print_exc(file=sys.stderr)
                    sys.stderr.flush()
                finally:
                    os._exit(code)
            out.write(json.dumps({"pid": pid}) + "\n")
        elif msg["cmd"] == "wait":
            _, status = os.waitpid(int(msg["pid"]), 0)
            code = os.waitstatus_to_exitcode(status)
            out.write(json.dumps({"pid": msg["pid"], "status": code}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
