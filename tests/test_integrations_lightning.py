"""Lightning writes its checkpoints through ``TorchckptIO`` (real Lightning, CPU, a tiny module)."""

from __future__ import annotations

import argparse
import math
import os
import posixpath
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning.pytorch as pl  # a missing lightning fails here: CI installs it
import pytest
import torch

from lightning_net import Mode, Net, hparams, loaders, make_trainer
from torchckpt import CheckpointManager, RetentionPolicy
from torchckpt.integrations.lightning import TorchckptIO


class StartStep(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.epoch = trainer.current_epoch


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_top2_and_last_through_the_plugin_then_resume(kind, request, tmp_path):
    backend = request.getfixturevalue(f"{kind}_backend")
    mgr = backend.manager()
    ckpt_io = TorchckptIO(mgr)
    train, val = loaders()
    trainer = make_trainer(ckpt_io, 2, tmp_path)
    trainer.fit(Net(**hparams()), train, val)
    assert trainer.global_step == 8
    cb = trainer.checkpoint_callback

    # the versions are exactly what ModelCheckpoint keeps: top-2 plus last, nothing on the local disk
    listed = {v.name: v for v in mgr.list()}
    expected = {posixpath.basename(p) for p in cb.best_k_models} | {"last.ckpt"}
    assert set(listed) == expected and len(expected) == 3
    for path, score in cb.best_k_models.items():
        assert math.isclose(listed[posixpath.basename(path)].metrics["val_loss"], float(score), rel_tol=1e-6)
    assert listed["last.ckpt"].step == 8 and listed["last.ckpt"].epoch == 1
    assert "train_loss" in listed["last.ckpt"].metrics  # every logged scalar, not only the monitored one
    assert ckpt_io.info("best").name == posixpath.basename(cb.best_model_path)
    assert not any(p.suffix == ".ckpt" for p in tmp_path.rglob("*"))
    assert mgr.verify().ok

    # hyperparameters holding a Path, an Enum and a Namespace come back as themselves, loaded safely
    state = ckpt_io.load_checkpoint("last")
    hp = state["hyper_parameters"]
    assert hp["data_dir"] == Path("/data/run-1") and isinstance(hp["data_dir"], Path)
    assert hp["mode"] is Mode.SLOW and hp["args"] == argparse.Namespace(depth=3, name="x")

    # a fresh Trainer (new process in real life) resumes with ckpt_path="last" at the right global step
    start = StartStep()
    ckpt_io2 = TorchckptIO(backend.manager())
    trainer2 = make_trainer(ckpt_io2, 3, tmp_path / "again")
    trainer2.callbacks.append(start)
    trainer2.fit(Net(**hparams()), train, val, ckpt_path="last")
    assert start.global_step == 8
    assert trainer2.global_step == 12
    kept = {posixpath.basename(p) for p in trainer2.checkpoint_callback.best_k_models}
    assert {v.name for v in mgr.list()} == kept | {"last.ckpt"}

    # load_from_checkpoint: the documented route, weights_only throughout
    best = ckpt_io2.load_from_checkpoint(Net, "best")
    assert isinstance(best, Net) and best.hparams.mode is Mode.SLOW and best.hparams.data_dir == Path("/data/run-1")
    saved = ckpt_io2.load_checkpoint("best")["state_dict"]
    assert torch.equal(best.layer.weight, saved["layer.weight"])


def test_ckpt_path_best_and_version_selectors(local_backend, tmp_path):
    mgr = local_backend.manager()
    ckpt_io = TorchckptIO(mgr)
    train, val = loaders()
    trainer = make_trainer(ckpt_io, 1, tmp_path)
    trainer.fit(Net(**hparams()), train, val)
    best_path = trainer.checkpoint_callback.best_model_path
    assert best_path.startswith(ckpt_io.dirpath)
    trainer.validate(ckpt_path="best", dataloaders=val, verbose=False)  # Lightning's own "best"
    pick = [
        lambda: mgr.list()[0].version,
        lambda: mgr.list()[0].name,
        lambda: "latest",
        lambda: ckpt_io.resolve("best"),
    ]
    for choose in pick:  # each resume trains on, and its ModelCheckpoint prunes: choose from the list at hand
        selector = choose()
        info = ckpt_io.info(selector)
        start = StartStep()
        t = make_trainer(TorchckptIO(local_backend.manager()), 2, tmp_path / "x")
        t.callbacks.append(start)
        t.fit(Net(**hparams()), train, val, ckpt_path=selector)
        assert start.global_step == info.step


def test_retention_has_one_owner(local_backend):
    with pytest.raises(ValueError, match="owns retention"):
        TorchckptIO(local_backend.manager(retention=RetentionPolicy(keep_last=2)))


def test_load_from_checkpoint_on_the_path_lightning_reports(local_backend, tmp_path):
    """``Net.load_from_checkpoint(best_model_path)`` reads through the plugin's filesystem (plain hparams)."""
    mgr = local_backend.manager()
    ckpt_io = TorchckptIO(mgr)
    train, val = loaders()
    trainer = make_trainer(ckpt_io, 1, tmp_path)
    trainer.fit(Net(lr=0.01), train, val)
    path = trainer.checkpoint_callback.best_model_path
    model = Net.load_from_checkpoint(path)
    assert model.hparams.lr == 0.01
    assert torch.equal(model.layer.weight, ckpt_io.load_checkpoint(path)["state_dict"]["layer.weight"])


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, os.environ["TESTS_DIR"])
    import torchckpt.formats.torch_file as tf
    from lightning_net import Net, hparams, loaders, make_trainer
    from torchckpt import CheckpointManager
    from torchckpt.integrations.lightning import TorchckptIO

    real, calls = tf.save_to, [0]
    def save_to(payload, raw):
        calls[0] += 1
        if calls[0] <= int(os.environ["GOOD_SAVES"]):
            return real(payload, raw)
        raw.write(b"PK" + b"x" * 4096)  # half a state.pt, then the process is killed
        raw.flush()
        open(os.environ["MARKER"], "w").close()
        time.sleep(120)
    tf.save_to = save_to
    io = TorchckptIO(CheckpointManager(os.environ["ROOT"]))
    train, val = loaders()
    make_trainer(io, 2, os.environ["WORK"]).fit(Net(**hparams()), train, val)
""")


def test_sigkill_mid_save_leaves_the_previous_version_restorable(tmp_path):
    root, marker = tmp_path / "ckpt", tmp_path / "marker"
    env = {
        **os.environ,
        "ROOT": str(root),
        "MARKER": str(marker),
        "WORK": str(tmp_path / "work"),
        "GOOD_SAVES": "4",
        "TESTS_DIR": str(Path(__file__).parent),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, "the child exited before the slow save"
            assert time.monotonic() < deadline, "the child never reached the slow save"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    mgr = CheckpointManager(str(root))
    ckpt_io = TorchckptIO(mgr)
    names = [v.name for v in mgr.list()]
    assert "last.ckpt" in names and len(names) >= 2
    assert mgr.verify().ok
    last = ckpt_io.info("last")
    assert ckpt_io.load_checkpoint("last")["global_step"] == last.step > 0
    assert any(n.startswith(".tmp-") for n in os.listdir(root / "versions"))  # the killed save's leftover
    assert mgr.gc(older_than=0) and not any(n.startswith(".tmp-") for n in os.listdir(root / "versions"))
    start = StartStep()
    trainer = make_trainer(ckpt_io, 2, tmp_path / "resume")
    trainer.callbacks.append(start)
    train, val = loaders()
    trainer.fit(Net(**hparams()), train, val, ckpt_path="last")
    assert start.global_step == last.step and trainer.global_step == 8
