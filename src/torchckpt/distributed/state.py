"""What a sharded save stores for live objects, and how a sharded restore puts it back.

Modules go through ``get_model_state_dict`` / ``set_model_state_dict`` and
optimizers through the ``*_optimizer_state_dict`` helpers (keyed by parameter
names, so the state reshards with the model); anything else through
``state_dict()`` / ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError
from ..live_objects import capture, load_into
from .collectives import process_group_active


def is_sharded(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    kinds: tuple[type, ...] = (DTensor,)
    try:
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        kinds += (ShardedTensor,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, kinds)


def holds_sharded(obj: Any, depth: int = 0) -> bool:
    if depth > 6:
        return False
    if is_sharded(obj):
        return True
    if isinstance(obj, torch.nn.Module):
        return any(is_sharded(t) for t in obj.parameters()) or any(is_sharded(t) for t in obj.buffers())
    if isinstance(obj, torch.optim.Optimizer):
        return any(is_sharded(p) for g in obj.param_groups for p in g["params"])
    if isinstance(obj, Mapping):
        return any(holds_sharded(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(holds_sharded(v, depth + 1) for v in obj)
    return False


def wants_sharded(setting: bool | None, objects: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> bool:
    """``distributed=True`` always; ``None`` (auto) when a process group is up and the state is sharded."""
    if setting is False:
        return False
    if setting is True:
        return True
    return process_group_active() and (holds_sharded(dict(objects)) or holds_sharded(dict(extra or {})))


def _optimizer_owner(optim: Any, objects: Mapping[str, Any]) -> torch.nn.Module | None:
    """The saved module whose parameters this optimizer updates (DCP keys optimizer state by their names)."""
    ids = {id(p) for g in optim.param_groups for p in g["params"]}
    best, best_count = None, 0
    for obj in objects.values():
        if isinstance(obj, torch.nn.Module):
            count = sum(1 for p in obj.parameters() if id(p) in ids)
            if count > best_count:
                best, best_count = obj, count
    return best if best is not None and best_count == len(ids) else None


def capture_sharded(name: str, obj: Any, objects: Mapping[str, Any]) -> Any:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if isinstance(obj, torch.nn.Module):
        return get_model_state_dict(obj)
    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            return get_optimizer_state_dict(owner, obj)
        return obj.state_dict()
    return capture(name, obj)


def apply_state(name: str, obj: Any, state: Any, objects: Mapping[str, Any], strict: bool) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if isinstance(obj, torch.nn.Module):
        result = set_model_state_dict(obj, state, options=StateDictOptions(strict=strict))
        if strict and (result.missing_keys or result.unexpected_keys):
            raise CheckpointError(f"{name}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        return
    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            set_optimizer_state_dict(owner, obj, state)
        else:
            obj.load_state_dict(state)
        return
    load_into(name, obj, state, strict)


def load_target(name: str, obj: Any, objects: Mapping[str, Any]) -> Any:
    """What DCP loads into for a live object: its own (possibly sharded) state dict."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if isinstance(obj, torch.optim.Optimizer):
        owner = _optimizer_owner(obj, objects)
        if owner is not None:
            _init_optimizer_state(obj)
            return get_optimizer_state_dict(owner, obj)
        return obj.state_dict()
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, Mapping):
        return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    return capture_sharded(name, obj, objects)


def _init_optimizer_state(optim: torch.optim.Optimizer) -> None:
    """Give a fresh optimizer its state tensors (DCP needs somewhere to load them into).

    DCP's helper does a zero-lr step, but skips it when gradients exist, which would
    silently drop the saved state: hide the gradients for the moment.
    """
    if optim.state:
        return
    from ..formats.dcp_io import init_optim_state

    if init_optim_state is None:  # pragma: no cover - get_optimizer_state_dict initialises it then
        return
    params = [p for g in optim.param_groups for p in g["params"]]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        init_optim_state(optim)
    finally:
        for p, g in zip(params, grads):
            p.grad = g


def without_shards(value: Any) -> Any:
    """``value`` with DTensors/ShardedTensors as plain placeholders: DCP writes those as tensor
    chunks (never pickled), so only the rest must pass the weights_only check."""
    if is_sharded(value):
        return torch.empty(0)
    if isinstance(value, Mapping):
        return {k: without_shards(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_shards(v) for v in value]
    return value
