"""Hugging Face ``Trainer`` checkpoints committed to moto S3 as folder versions, and resumed from there."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded: the model is built from a config
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from torchckpt import RetentionPolicy  # noqa: E402
from torchckpt.integrations.transformers import TorchckptCallback, resume_from_checkpoint  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 24, length: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))


def make_args(out, max_steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=1,
        learning_rate=1e-3,
        metric_for_best_model="eval_loss",
        report_to=[],
        use_cpu=True,
        save_total_limit=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


class Begin(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.global_step = state.global_step
        self.optimizer_state = {
            k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
            for k, v in optimizer.state_dict()["state"].items()
        }


def test_trainer_checkpoints_committed_to_s3_and_resumed(s3_backend, tmp_path):
    mgr = s3_backend.manager(retention=RetentionPolicy(keep_last=2))
    cb = TorchckptCallback(mgr)
    data = Tokens()
    trainer = Trainer(
        model=tiny_model(), args=make_args(tmp_path / "run1", 6), train_dataset=data, eval_dataset=data, callbacks=[cb]
    )
    trainer.train()
    assert [i.name for i in cb.committed] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    listed = mgr.list()
    assert [v.name for v in listed] == ["checkpoint-4", "checkpoint-6"]  # the manager's retention, on S3
    last = listed[-1]
    assert last.step == 6 and last.layout == "files"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(last.files)
    assert any(name.startswith("rng_state") for name in last.files)
    assert "loss" in last.metrics and "eval_loss" in last.metrics
    assert last.metrics["best_eval_loss"] == trainer.state.best_metric
    assert mgr.verify().ok
    saved_optimizer = torch.load(tmp_path / "run1" / "checkpoint-6" / "optimizer.pt", weights_only=True)

    # a new Trainer on an empty output folder resumes from the latest committed version, downloaded and verified
    out2 = tmp_path / "run2"
    begin = Begin()
    trainer2 = Trainer(
        model=tiny_model(),
        args=make_args(out2, 10),
        train_dataset=data,
        eval_dataset=data,
        callbacks=[TorchckptCallback(mgr), begin],
    )
    path = resume_from_checkpoint(mgr, out2)
    assert path == str(out2 / "checkpoint-6")
    trainer2.train(resume_from_checkpoint=path)
    assert begin.global_step == 6 and trainer2.state.global_step == 10
    for k, state in saved_optimizer["state"].items():
        for n, t in state.items():
            if torch.is_tensor(t):
                assert torch.equal(begin.optimizer_state[k][n], t), (k, n)
    assert [v.name for v in mgr.list()] == ["checkpoint-8", "checkpoint-10"]


def test_resume_on_an_empty_root_starts_fresh(memory_backend, tmp_path):
    assert resume_from_checkpoint(memory_backend.manager(), tmp_path) is None
