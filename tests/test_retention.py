"""Retention: the rule table (pure, with injected clock values) and pruning through a manager.

The table builds ``CheckpointInfo`` lists directly, so every case states its
versions' steps, commit times, metrics and pins and the exact set it keeps.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import torch
import torch.nn as nn

from torchckpt import CheckpointInfo, CheckpointManager, RetentionPolicy, lifecycle
from torchckpt.errors import CheckpointError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)  # aligned to every interval used below


def V(step: int, minutes: float = 0.0, *, loss: float | None = None, pinned: bool = False, **metrics: float) -> dict:
    """One version spec: step, commit time (minutes after T0), metrics, pin."""
    if loss is not None:
        metrics["loss"] = loss
    return {"step": step, "minutes": minutes, "metrics": metrics, "pinned": pinned}


def versions(*specs: dict) -> list[CheckpointInfo]:
    """Versions in commit order; ids v0, v1, ... so expectations read easily."""
    return [
        CheckpointInfo(
            version=f"v{i}",
            step=s["step"],
            created_at=T0 + timedelta(minutes=s["minutes"]),
            metrics=s["metrics"],
            pinned=s["pinned"],
        )
        for i, s in enumerate(specs)
    ]


def kept(policy: RetentionPolicy, infos: list[CheckpointInfo]) -> list[str]:
    removed = {v.version for v in policy.to_remove(infos)}
    return [v.version for v in infos if v.version not in removed]


# Five versions at steps 100..500, one every 10 minutes, losses 0.5 0.2 0.4 0.1 0.3.
FIVE = [V(100 * (i + 1), 10 * i, loss=loss) for i, loss in enumerate([0.5, 0.2, 0.4, 0.1, 0.3])]

CASES: list[tuple[str, RetentionPolicy, list[dict], list[str]]] = [
    ("no rules keep everything", RetentionPolicy(), FIVE, ["v0", "v1", "v2", "v3", "v4"]),
    ("keep_last=2", RetentionPolicy(keep_last=2), FIVE, ["v3", "v4"]),
    ("keep_last larger than history", RetentionPolicy(keep_last=9), FIVE, ["v0", "v1", "v2", "v3", "v4"]),
    ("keep_last=1 is just the newest", RetentionPolicy(keep_last=1), FIVE, ["v4"]),
    ("keep_every_n_steps=200", RetentionPolicy(keep_every_n_steps=200), FIVE, ["v1", "v3", "v4"]),
    ("keep_every_n_steps keeps step 0", RetentionPolicy(keep_every_n_steps=1000), [V(0), V(1), V(2)], ["v0", "v2"]),
    ("keep_best=1 min", RetentionPolicy(keep_best=1, metric="loss"), FIVE, ["v3", "v4"]),
    ("keep_best=2 min", RetentionPolicy(keep_best=2, metric="loss"), FIVE, ["v1", "v3", "v4"]),
    ("keep_best=1 max", RetentionPolicy(keep_best=1, metric="loss", mode="max"), FIVE, ["v0", "v4"]),
    # orbax#526: the best-by-metric rule alone must never evict the newest version.
    (
        "orbax#526: newest is worst but kept",
        RetentionPolicy(keep_best=1, metric="loss"),
        [V(1, 0, loss=0.1), V(2, 1, loss=0.9), V(3, 2, loss=0.8)],
        ["v0", "v2"],
    ),
    (
        "ties go to the newer version (as best())",
        RetentionPolicy(keep_best=1, metric="loss"),
        [V(1, 0, loss=0.1), V(2, 1, loss=0.1), V(3, 2, loss=0.5)],
        ["v1", "v2"],
    ),
    # Versions without the metric: not ranked; the best rule alone never evicts them.
    (
        "missing metric, best rule alone",
        RetentionPolicy(keep_best=1, metric="loss"),
        [V(1, 0, loss=0.1), V(2, 1), V(3, 2, loss=0.5), V(4, 3, loss=0.7)],
        ["v0", "v1", "v3"],
    ),
    (
        "missing metric, with keep_last",
        RetentionPolicy(keep_best=1, metric="loss", keep_last=1),
        [V(1, 0, loss=0.1), V(2, 1), V(3, 2, loss=0.5), V(4, 3)],
        ["v0", "v3"],
    ),
    (
        "NaN metric is not ranked",
        RetentionPolicy(keep_best=1, metric="loss", keep_last=1),
        [V(1, 0, loss=float("nan")), V(2, 1, loss=0.3), V(3, 2, loss=0.5)],
        ["v1", "v2"],
    ),
    (
        "other metric names do not count",
        RetentionPolicy(keep_best=1, metric="loss", keep_last=1),
        [V(1, 0, acc=0.9), V(2, 1, loss=0.3), V(3, 2, acc=0.1)],
        ["v1", "v2"],
    ),
    # Unions: a version is kept when ANY rule keeps it.
    ("union last + best", RetentionPolicy(keep_last=1, keep_best=1, metric="loss"), FIVE, ["v3", "v4"]),
    (
        "union last + every_n + best",
        RetentionPolicy(keep_last=1, keep_every_n_steps=500, keep_best=1, metric="loss", mode="max"),
        FIVE,
        ["v0", "v4"],
    ),
    (
        "union every_n + best",
        RetentionPolicy(keep_every_n_steps=300, keep_best=1, metric="loss"),
        FIVE,
        ["v2", "v3", "v4"],
    ),
    # Newest and pinned are always kept.
    (
        "pinned survives keep_last",
        RetentionPolicy(keep_last=1),
        [V(1, 0), V(2, 1, pinned=True), V(3, 2), V(4, 3)],
        ["v1", "v3"],
    ),
    (
        "pinned survives every rule",
        RetentionPolicy(keep_last=1, keep_every_n_steps=2, keep_best=1, metric="loss"),
        [V(1, 0, loss=0.9, pinned=True), V(3, 1, loss=0.1), V(5, 2, loss=0.5)],
        ["v0", "v1", "v2"],
    ),
    # Steps saved out of order after a rollback: "last" and "newest" follow commit order, not step.
    (
        "rollback: newest by commit, not by step",
        RetentionPolicy(keep_last=2),
        [V(100, 0), V(200, 1), V(300, 2), V(150, 3), V(160, 4)],
        ["v3", "v4"],
    ),
    (
        "rollback: newest with a lower step is kept",
        RetentionPolicy(keep_best=1, metric="loss"),
        [V(100, 0, loss=0.3), V(300, 1, loss=0.1), V(200, 2, loss=0.9)],
        ["v1", "v2"],
    ),
    (
        "rollback: every_n uses the step",
        RetentionPolicy(keep_every_n_steps=100),
        [V(100, 0), V(250, 1), V(200, 2), V(210, 3)],
        ["v0", "v2", "v3"],
    ),
    # keep_interval: the first version of each interval (epoch-aligned), with injected commit times.
    (
        "interval 30m: first of each half hour",
        RetentionPolicy(keep_interval=timedelta(minutes=30)),
        [V(1, 0), V(2, 10), V(3, 29.99), V(4, 30), V(5, 45), V(6, 61), V(7, 62)],
        ["v0", "v3", "v5", "v6"],
    ),
    (
        "interval in seconds",
        RetentionPolicy(keep_interval=1800),
        [V(1, 5), V(2, 25), V(3, 35), V(4, 40)],
        ["v0", "v2", "v3"],
    ),
    (
        "interval boundary: exactly on the edge starts a new interval",
        RetentionPolicy(keep_interval=3600),
        [V(1, 59.9), V(2, 60), V(3, 119.99), V(4, 120), V(5, 121)],
        ["v0", "v1", "v3", "v4"],
    ),
    (
        "interval is stable under pruning (re-applying removes nothing more)",
        RetentionPolicy(keep_interval=3600),
        [V(1, 0), V(4, 60), V(6, 121)],
        ["v0", "v1", "v2"],
    ),
    (
        "interval + keep_last",
        RetentionPolicy(keep_interval=timedelta(hours=1), keep_last=2),
        [V(1, 0), V(2, 20), V(3, 40), V(4, 70), V(5, 80), V(6, 90)],
        ["v0", "v3", "v4", "v5"],
    ),
    ("empty history", RetentionPolicy(keep_last=1), [], []),
    ("single version is newest", RetentionPolicy(keep_best=1, metric="loss"), [V(1, 0, loss=1.0)], ["v0"]),
]


@pytest.mark.parametrize("policy,specs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_table(policy: RetentionPolicy, specs: list[dict], expected: list[str]) -> None:
    infos = versions(*specs)
    assert kept(policy, infos) == expected
    # Applying the policy to what it kept removes nothing more (prune is idempotent).
    survivors = [v for v in infos if v.version in expected]
    assert policy.to_remove(survivors) == []


def test_to_remove_is_oldest_first_and_never_the_newest() -> None:
    infos = versions(*FIVE)
    removed = RetentionPolicy(keep_last=1).to_remove(infos)
    assert [v.version for v in removed] == ["v0", "v1", "v2", "v3"]
    for policy in (
        RetentionPolicy(keep_best=1, metric="loss"),
        RetentionPolicy(keep_every_n_steps=7),
        RetentionPolicy(keep_interval=1),
        RetentionPolicy(keep_best=1, metric="absent"),
    ):
        assert "v4" not in {v.version for v in policy.to_remove(infos)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_last": 0},
        {"keep_last": -1},
        {"keep_last": 1.5},
        {"keep_last": True},
        {"keep_every_n_steps": 0},
        {"keep_best": 0, "metric": "loss"},
        {"keep_best": 1},
        {"keep_best": 1, "metric": ""},
        {"keep_best": 1, "metric": 3},
        {"mode": "avg"},
        {"keep_best": 1, "metric": "loss", "mode": "avg"},
        {"keep_interval": 0},
        {"keep_interval": -5},
        {"keep_interval": timedelta(0)},
        {"keep_interval": float("inf")},
        {"keep_interval": float("nan")},
        {"keep_interval": "6h"},
    ],
)
def test_bad_values_raise_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(**kwargs)


def test_good_values_construct() -> None:
    RetentionPolicy(
        keep_last=1, keep_every_n_steps=10, keep_interval=timedelta(hours=6), keep_best=2, metric="val_loss", mode="max"
    )
    RetentionPolicy(keep_interval=0.5)
    assert RetentionPolicy().keeps_everything


# ----- through a manager ----------------------------------------------------------------------------------
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))


def test_prune_dry_run_removes_nothing(memory_backend: Any) -> None:
    mgr = memory_backend.manager()
    net = _net()
    for step in range(4):
        mgr.save(step, model=net)
    before = mgr.list()
    would = mgr.prune(RetentionPolicy(keep_last=1), dry_run=True)
    assert [v.version for v in would] == [v.version for v in before[:3]]
    assert mgr.list() == before
    assert mgr.verify().ok
    # dry runs work on a read-only manager too; a real prune does not.
    ro = memory_backend.manager(read_only=True)
    assert [v.version for v in ro.prune(RetentionPolicy(keep_last=1), dry_run=True)] == [v.version for v in would]
    with pytest.raises(CheckpointError):
        ro.prune(RetentionPolicy(keep_last=1))
    assert mgr.prune() == []  # no policy on the manager: nothing to do


def test_prune_on_every_backend(backend: Any) -> None:
    """Data really disappears, the manifest follows, exports go with their version, pins survive."""
    net = _net()
    mgr = backend.manager()
    infos = [
        mgr.save(step, model=net, metrics={"loss": loss})
        for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.7), (5, 0.8)]
    ]
    art = "exports/{}/weights.bin"
    # An export recorded on version 1 (the export module itself is tested in test_export.py).
    from torchckpt import manifest as mf
    from torchckpt.hashing import checksum_bytes

    mgr.storage.write_bytes(art.format(infos[0].version), b"artifact")
    # ...and one the manifest never heard of (an export cut short before its record): it goes too.
    mgr.storage.write_bytes(f"exports/{infos[3].version}/stray.pt", b"stray")

    def record(m: mf.Manifest) -> mf.Manifest:
        m.replace(
            m.find(infos[0].version).with_(
                exports={"weights.bin": {"kind": "torchscript", "size": 8, "checksum": checksum_bytes(b"artifact")}}
            )
        )
        return m

    mf.update(mgr.storage, record)
    mgr.pin(infos[2].version)

    removed = mgr.prune(RetentionPolicy(keep_last=1, keep_best=1, metric="loss"))
    assert [v.version for v in removed] == [infos[0].version, infos[3].version]
    assert removed[0].exports  # the removed record names the export it took along

    fresh = backend.manager(read_only=True)
    assert [v.version for v in fresh.list()] == [infos[1].version, infos[2].version, infos[4].version]
    for gone in removed:
        for name in gone.files:
            assert not mgr.storage.exists(f"versions/{gone.version}/{name}")
        assert not mgr.storage.exists(f"versions/{gone.version}/meta.json")
        assert mgr.storage.list_names(f"versions/{gone.version}") == []
    assert not mgr.storage.exists(art.format(infos[0].version))
    assert not mgr.storage.exists(f"exports/{infos[3].version}/stray.pt")
    assert mgr.storage.list_names(f"exports/{infos[0].version}") == []
    assert fresh.verify().ok
    # What is left restores; a second prune with the same policy removes nothing.
    fresh.restore(infos[1].version, model=_net())
    assert mgr.prune(RetentionPolicy(keep_last=1, keep_best=1, metric="loss")) == []


def test_retention_runs_after_each_commit(memory_backend: Any) -> None:
    mgr = memory_backend.manager(retention=RetentionPolicy(keep_last=2, keep_best=1, metric="loss"))
    net = _net()
    saved = [mgr.save(s, model=net, metrics={"loss": loss}) for s, loss in enumerate([0.3, 0.9, 0.8, 0.7, 0.6])]
    assert [v.version for v in mgr.list()] == [saved[0].version, saved[3].version, saved[4].version]
    assert mgr.best("loss").version == saved[0].version


def test_failed_retention_does_not_fail_a_committed_save(memory_backend: Any, monkeypatch: Any, caplog: Any) -> None:
    mgr = memory_backend.manager(retention=RetentionPolicy(keep_last=1))
    net = _net()
    mgr.save(1, model=net)

    def broken(*_: Any, **__: Any) -> None:
        raise OSError("storage hiccup")

    monkeypatch.setattr(lifecycle, "delete_data", broken)
    info = mgr.save(2, model=net)
    assert mgr.latest().version == info.version
    assert "retention" in caplog.text


def test_removal_unlists_before_deleting(memory_backend: Any, monkeypatch: Any) -> None:
    """A crash between the manifest update and the data delete leaves garbage, never a listed ghost."""
    mgr = memory_backend.manager()
    net = _net()
    first = mgr.save(1, model=net)
    mgr.save(2, model=net)
    seen: list[list[str]] = []

    def crash(storage: Any, infos: list[CheckpointInfo]) -> None:
        seen.append([v.version for v in CheckpointManager(memory_backend.url).list()])
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "delete_data", crash)
    with pytest.raises(KeyboardInterrupt):
        mgr.prune(RetentionPolicy(keep_last=1))
    assert first.version not in seen[0]
    assert mgr.storage.exists(f"versions/{first.version}/meta.json")  # data still there: garbage
    assert first.version not in [v.version for v in mgr.list()]


def test_save_with_retention_reads_and_writes_the_manifest_once(memory_backend: Any, monkeypatch: Any) -> None:
    """Listing the new version and unlisting what retention drops is one compare-and-swap."""
    mgr = memory_backend.manager(retention=RetentionPolicy(keep_last=1))
    net = _net()
    first = mgr.save(1, model=net)
    calls: list[str] = []
    real_read, real_write = mgr.storage.read_versioned, mgr.storage.write_conditional
    monkeypatch.setattr(mgr.storage, "read_versioned", lambda *a, **k: calls.append("read") or real_read(*a, **k))
    monkeypatch.setattr(mgr.storage, "write_conditional", lambda *a, **k: calls.append("write") or real_write(*a, **k))
    second = mgr.save(2, model=net)
    assert calls == ["read", "write"]
    assert [v.version for v in mgr.list()] == [second.version]
    assert not mgr.storage.exists(f"versions/{first.version}/meta.json")
