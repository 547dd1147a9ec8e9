"""A tiny LightningModule (shared by the Lightning tests and their SIGKILL child process)."""

from __future__ import annotations

import argparse
import enum
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Net(pl.LightningModule):
    def __init__(
        self,
        data_dir: Path = Path("/data"),
        mode: Mode = Mode.FAST,
        args: argparse.Namespace | None = None,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)


def make_trainer(ckpt_io, max_epochs: int, root_dir, **ckpt_kwargs) -> pl.Trainer:
    ckpt = ckpt_io.model_checkpoint(monitor="val_loss", save_top_k=2, save_last=True, **ckpt_kwargs)
    return pl.Trainer(
        max_epochs=max_epochs,
        val_check_interval=0.5,
        plugins=[ckpt_io],
        callbacks=[ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(root_dir),
        num_sanity_val_steps=0,
    )


def hparams() -> dict:
    return {"data_dir": Path("/data/run-1"), "mode": Mode.SLOW, "args": argparse.Namespace(depth=3, name="x")}
