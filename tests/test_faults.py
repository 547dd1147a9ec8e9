"""Fault injection: save, prune and copy fail at every single storage call, in turn.

For each operation and each kind of filesystem call (open, write, close, pipe,
cat, rm, exists, info, ls, raw S3 requests …) the k-th call raises, for every k
until the operation no longer reaches a k-th call. Each run must either succeed
or raise a ``CheckpointError`` (never a raw ``OSError``/``RuntimeError``);
afterwards no partial version is listed, every version listed before is still
listed and loads bit-exactly, the next save through the same manager succeeds,
and ``gc`` leaves no leftover. On ``memory://`` and on S3 (moto); on
``memory://`` also with persistent outages (every call from the k-th on fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pytest

from _writer import assert_version_ok, root_entries, tensors_for
from faulty_fs import KINDS, FaultyFS
from torchckpt import CheckpointError, CheckpointManager, RetentionPolicy
from torchckpt.transfer import copy_versions

MAX_K = 200  # safety net: no operation here makes that many calls of one kind


@dataclass
class Harness:
    """One root reached twice: through a FaultyFS (the manager under test) and directly (the checker)."""

    faulty: FaultyFS
    mgr: CheckpointManager
    clean: CheckpointManager
    step: int = 0
    runs: int = 0
    faults: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def next_step(self) -> int:
        self.step += 1
        return self.step


def inner_fs(backend: Any) -> Any:
    if backend.kind == "memory":
        return fsspec.filesystem("memory")
    return fsspec.filesystem("s3", **backend.storage_options)


def harness(backend: Any, sub: str) -> Harness:
    inner = inner_fs(backend)
    url = backend.sub(sub).url
    faulty = FaultyFS(inner)
    clean = CheckpointManager(url, filesystem=inner)
    h = Harness(faulty, CheckpointManager(url, filesystem=faulty), clean)
    for _ in range(2):
        step = h.next_step()
        clean.save(step, model=tensors_for(step))
    return h


def attempt(h: Harness, kind: str, k: int, persistent: bool, op: Callable[[], Any]) -> bool:
    """Run ``op`` with the fault armed; True when the fault fired (so a larger k is worth trying)."""
    h.faulty.arm(kind, k, persistent=persistent)
    try:
        op()
        outcome = "ok"
    except CheckpointError as exc:
        outcome = type(exc).__name__
    except Exception as exc:  # the bug this test exists to find
        pytest.fail(f"{kind} fault #{k}: a raw {type(exc).__name__} leaked instead of a CheckpointError: {exc}")
    finally:
        fired = h.faulty.fired
        h.faulty.disarm()
    h.runs += 1
    h.faults += fired
    h.outcomes[outcome] = h.outcomes.get(outcome, 0) + 1
    return bool(fired)


def check(h: Harness, must_stay: set[str], mgr: CheckpointManager | None = None) -> None:
    """The invariants after every faulted run (``mgr``: the root to check, default the harness's)."""
    clean = mgr or h.clean
    listed = clean.list()
    ids = {v.version for v in listed}
    assert must_stay <= ids, f"lost versions: {sorted(must_stay - ids)}"
    committed, _, _ = root_entries(clean)
    assert ids <= set(committed), f"listed without meta.json: {sorted(ids - set(committed))}"
    for info in listed:
        assert_version_ok(clean, info)


def next_save_works(h: Harness) -> None:
    step = h.next_step()
    info = h.mgr.save(step, model=tensors_for(step))
    assert h.clean.latest().version == info.version
    assert_version_ok(h.clean, info)
    h.clean.prune(RetentionPolicy(keep_last=3))  # keep the per-run checks small


def finish(h: Harness) -> None:
    h.mgr.gc(older_than=0)
    _, leftovers, strays = root_entries(h.clean)
    assert leftovers == [] and strays == []
    assert h.clean.verify().ok
    check(h, set())


# ----- the operations -------------------------------------------------------------------------------
def campaign_save(h: Harness, persistent: bool) -> None:
    for kind in KINDS:
        for k in range(1, MAX_K):
            before = {v.version for v in h.clean.list()}
            step = h.next_step()
            fired = attempt(h, kind, k, persistent, lambda step=step: h.mgr.save(step, model=tensors_for(step)))
            check(h, before)
            next_save_works(h)
            if not fired:
                break
    finish(h)


def campaign_prune(h: Harness, persistent: bool) -> None:
    policy = RetentionPolicy(keep_last=2)
    for kind in KINDS:
        for k in range(1, MAX_K):
            for _ in range(2):
                step = h.next_step()
                h.clean.save(step, model=tensors_for(step))
            listed = h.clean.list()
            doomed = {v.version for v in policy.to_remove(listed)}
            assert doomed
            keep = {v.version for v in listed} - doomed
            fired = attempt(h, kind, k, persistent, lambda: h.mgr.prune(policy))
            check(h, keep)
            next_save_works(h)
            if not fired:
                break
    finish(h)


def campaign_copy(h: Harness, src: Harness, faulty_side: str) -> None:
    """Copy one new version per run from ``src`` to ``h``; the fault is on ``faulty_side``."""
    for kind in KINDS:
        for k in range(1, MAX_K):
            step = src.next_step()
            new = src.clean.save(step, model=tensors_for(step))
            before = {v.version for v in h.clean.list()}
            src_mgr, dst_mgr = (src.mgr, h.clean) if faulty_side == "src" else (src.clean, h.mgr)
            faulty = src.faulty if faulty_side == "src" else h.faulty
            faulty.arm(kind, k)
            try:
                copy_versions(src_mgr, dst_mgr, [new.version])
                outcome = "ok"
            except CheckpointError as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                pytest.fail(f"copy, {faulty_side} {kind} fault #{k}: raw {type(exc).__name__} leaked: {exc}")
            finally:
                fired = faulty.fired
                faulty.disarm()
            h.runs += 1
            h.faults += fired
            h.outcomes[outcome] = h.outcomes.get(outcome, 0) + 1
            check(h, before)
            assert new.version in {v.version for v in src.clean.list()}  # a copy never harms its source
            # an interrupted copy is simply run again
            copy_versions(src.clean, h.clean, [new.version])
            assert_version_ok(h.clean, h.clean.info(new.version))
            h.clean.prune(RetentionPolicy(keep_last=3))
            src.clean.prune(RetentionPolicy(keep_last=3))
            if not fired:
                break
    finish(h)
    finish(src)


def report(name: str, h: Harness) -> None:
    print(f"{name}: {h.runs} runs, {h.faults} injected faults, outcomes {h.outcomes}")
    assert h.faults > 0


# ----- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("persistent", [False, True], ids=["single", "outage"])
def test_save_memory(memory_backend, persistent) -> None:
    h = harness(memory_backend, "save")
    campaign_save(h, persistent)
    report(f"save memory {persistent=}", h)


@pytest.mark.parametrize("persistent", [False, True], ids=["single", "outage"])
def test_prune_memory(memory_backend, persistent) -> None:
    h = harness(memory_backend, "prune")
    campaign_prune(h, persistent)
    report(f"prune memory {persistent=}", h)


def test_save_s3(s3_backend) -> None:
    h = harness(s3_backend, "save")
    campaign_save(h, False)
    report("save s3", h)


def test_prune_s3(s3_backend) -> None:
    h = harness(s3_backend, "prune")
    campaign_prune(h, False)
    report("prune s3", h)


@pytest.mark.parametrize("side", ["dst", "src"])
def test_copy_memory(memory_backend, side) -> None:
    h, src = harness(memory_backend, "dst"), harness(memory_backend, "src")
    campaign_copy(h, src, side)
    report(f"copy memory {side}", h)


def test_copy_s3(s3_backend) -> None:
    """Faults on the writing side (source-side faults run on memory://: same code path, reads only)."""
    h, src = harness(s3_backend, "dst"), harness(s3_backend, "src")
    campaign_copy(h, src, "dst")
    report("copy s3 dst", h)
