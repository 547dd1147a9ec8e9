"""Version selectors, ``best`` by a metric, unknown versions and path traversal (every backend)."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch

from torchckpt import RetentionPolicy
from torchckpt.errors import CheckpointError, CheckpointNotFoundError, ManifestError


def _save_series(mgr):
    """Four versions: steps 10, 20, 20 (again), 30 with distinct weights and metrics."""
    out = []
    for i, (step, loss, acc) in enumerate([(10, 0.9, 0.50), (20, 0.3, 0.80), (20, 0.5, 0.95), (30, 0.4, 0.70)]):
        out.append(mgr.save(step, w=torch.full((2,), float(i)), metrics={"val_loss": loss, "acc": acc}))
    return out


def _w(ckpt) -> float:
    return float(ckpt.state["w"][0])


def test_every_selector(backend):
    mgr = backend.manager(retention=RetentionPolicy(metric="val_loss", mode="min"))
    v = _save_series(mgr)
    reader = backend.manager(read_only=True, retention=RetentionPolicy(metric="val_loss"))

    assert reader.restore("latest").info == v[3] and _w(reader.restore()) == 3.0
    assert reader.restore("best").info == v[1] and _w(reader.restore("best")) == 1.0
    assert reader.restore(10).info == v[0]
    assert reader.restore(20).info == v[2]  # an int step means the latest version with that step
    assert reader.restore(v[1].version).info == v[1]
    assert reader.restore(v[0]).info == v[0]  # a CheckpointInfo
    assert _w(reader.restore(v[0])) == 0.0

    # the same selectors through load() and info()
    assert float(reader.load(v[1].version)["w"][0]) == 1.0
    assert float(reader.load("best")["w"][0]) == 1.0
    assert reader.info(30) == v[3] and reader.info("latest") == v[3] and reader.info(v[2]) == v[2]


def test_best_by_metric_min_and_max(backend):
    mgr = backend.manager()
    v = _save_series(mgr)
    mgr.save(40, w=torch.zeros(2), metrics={"other": 1.0})  # lacks the metric: not ranked
    mgr.save(50, w=torch.zeros(2), metrics={"val_loss": float("nan")})  # NaN is never best
    assert mgr.best("val_loss") == v[1]
    assert mgr.best("val_loss", mode="min") == v[1]
    assert mgr.best("acc", mode="max") == v[2]
    assert mgr.best("acc", mode="min") == v[0]
    assert mgr.best("missing") is None
    with pytest.raises(ValueError):
        mgr.best("acc", mode="avg")

    maxed = backend.manager(retention=RetentionPolicy(metric="acc", mode="max"))
    assert maxed.best() == v[2]
    assert maxed.restore("best").info == v[2]
    assert float(maxed.load("best")["w"][0]) == 2.0


def test_best_ties_newest_wins(backend):
    mgr = backend.manager()
    mgr.save(1, w=torch.zeros(1), metrics={"m": 1.0})
    newer = mgr.save(2, w=torch.zeros(1), metrics={"m": 1.0})
    assert mgr.best("m") == newer


def test_unknown_selector_names_what_exists(backend):
    mgr = backend.manager()
    with pytest.raises(CheckpointNotFoundError, match="no committed versions"):
        mgr.restore()
    assert mgr.latest() is None
    v = _save_series(mgr)
    for selector in (99, "20000101T000000.000000Z-step000001-abcdef", v[0].with_(version="20990101T000000.000000Z-x")):
        with pytest.raises(CheckpointNotFoundError) as err:
            mgr.restore(selector)
        assert v[-1].version in str(err.value)  # it names what exists
        assert "step 30" in str(err.value)
        assert isinstance(err.value, LookupError) and isinstance(err.value, CheckpointError)
    with pytest.raises(CheckpointNotFoundError):
        mgr.load(99)
    with pytest.raises(CheckpointNotFoundError):
        mgr.info(-1)
    with pytest.raises(CheckpointNotFoundError):
        mgr.delete(99)
    with pytest.raises(TypeError):
        mgr.restore(1.5)  # type: ignore[arg-type]
    assert len(mgr.list()) == 4


BAD_IDS = [
    "../escape",
    "..",
    "a/../../b",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "versions/x",
    "a b",
    "a\\b",
    "a\x00b",
    "x;rm -rf",
    "name%2F..",
    ".hidden",
    "",
    "é",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_traversal_and_odd_ids_refused(local_backend, bad):
    mgr = local_backend.manager()
    mgr.save(1, w=torch.zeros(1))
    for call in (mgr.restore, mgr.load, mgr.info, mgr.delete, mgr.pin, mgr.verify):
        with pytest.raises(CheckpointError):
            call(bad)
    assert len(mgr.list()) == 1


def test_path_traversal_refused_every_backend(backend):
    mgr = backend.manager()
    mgr.save(1, w=torch.zeros(1))
    for bad in ("../x", "/abs", "a/b", "..", "a b"):
        with pytest.raises(CheckpointError):
            mgr.restore(bad)
        with pytest.raises(CheckpointError):
            mgr.storage.path(bad if bad.startswith(("/", "..")) else f"../{bad}")
    assert len(mgr.list()) == 1


def test_manifest_cannot_smuggle_a_path(backend, tmp_path):
    """A tampered manifest naming ``../`` is rejected, and nothing outside the root is read."""
    mgr = backend.manager()
    good = mgr.save(1, w=torch.zeros(1))
    fs, root = fsspec.core.url_to_fs(mgr.root_url, **backend.storage_options)
    doc = json.loads(fs.cat_file(f"{root}/manifest.json"))
    doc["versions"][0]["id"] = "../../outside"
    fs.pipe_file(f"{root}/manifest.json", json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="repair"):
        backend.manager().list()
    with pytest.raises(ManifestError):
        backend.manager().restore()
    # repair rebuilds it from meta.json files
    assert [v.version for v in backend.manager().repair()] == [good.version]
    assert backend.manager().latest() == good


def test_odd_folder_under_versions_ignored_by_repair(backend):
    mgr = backend.manager()
    good = mgr.save(1, w=torch.zeros(1))
    fs, root = fsspec.core.url_to_fs(mgr.root_url, **backend.storage_options)
    meta = json.loads(fs.cat_file(f"{root}/versions/{good.version}/meta.json"))
    meta["id"] = "a b"
    fs.makedirs(f"{root}/versions/a b", exist_ok=True)
    fs.pipe_file(f"{root}/versions/a b/meta.json", json.dumps(meta).encode())
    assert [v.version for v in mgr.repair()] == [good.version]


def test_best_with_fallback_ranks_the_scanned_versions_when_the_manifest_is_unreadable(memory_backend):
    """restore("best", fallback=True) picks among the meta.json listing, not a second manifest read."""
    mgr = memory_backend.manager(retention=RetentionPolicy(metric="val_loss", mode="min"))
    v = _save_series(mgr)
    mgr.storage.write_bytes("manifest.json", b"{not json")
    with pytest.warns(UserWarning, match="falling back"):
        ckpt = mgr.restore("best", fallback=True, w=torch.zeros(2))
    assert ckpt.info.version == v[1].version and _w(ckpt) == 1.0


def test_tensor_summary_of_latest_describes_the_version_it_resolved(memory_backend):
    """A save landing between resolving 'latest' and loading it must not mix two versions."""
    from torchckpt.summary import tensor_summary

    mgr = memory_backend.manager()
    mgr.save(1, w=torch.zeros(2))
    real_info = mgr.info

    def info_then_a_concurrent_save(version):
        found = real_info(version)
        mgr.save(2, w=torch.zeros(5))
        return found

    mgr.info = info_then_a_concurrent_save
    assert [t.shape for t in tensor_summary(mgr, "latest")] == [(2,)]
