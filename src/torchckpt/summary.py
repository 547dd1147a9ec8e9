"""Tensor summaries of a stored version (names, shapes, dtypes) for ``torchckpt show``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass(frozen=True)
class TensorSummary:
    name: str  # dotted path, e.g. "model.0.weight"
    shape: tuple[int, ...]
    dtype: str
    numel: int


def _walk(prefix: str, value: Any) -> Iterator[TensorSummary]:
    if isinstance(value, torch.Tensor):
        yield TensorSummary(prefix, tuple(value.shape), str(value.dtype).replace("torch.", ""), value.numel())
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(f"{prefix}.{i}" if prefix else str(i), v)


def tensor_summary(manager: Any, version: Any = "latest") -> list[TensorSummary]:
    """Every tensor of a version's saved objects (loaded onto the CPU, checksum verified)."""
    info = manager.info(version)
    if info.layout == "dcp":  # sharded: full shapes come from DCP's metadata, no tensor is read
        from .distributed import tensor_entries

        return [TensorSummary(*entry) for entry in tensor_entries(manager, info)]
    if info.format == "safetensors":  # shapes from state.pt + the files' headers, no tensor data read
        from .safetensors_format import summarize

        return [TensorSummary(*row) for row in summarize(manager.storage, info)]
    state = manager.load(info, map_location="cpu")  # the resolved version, even if a save lands meanwhile
    return list(_walk("", state))
