"""Live training objects in and out: what ``save`` stores for each object, and how ``restore`` loads it.

``capture`` takes a module's or optimizer's ``state_dict()`` (views, no copy), a
tensor, a ``torch.Generator``'s state, or a dict; ``load_into`` puts a saved state
back into the live object in place (modules through ``fastload.prefill_module``:
one ``memcpy`` per matching CPU tensor before ``load_state_dict`` runs its checks).
Wrapped modules (DDP, DataParallel, ``torch.compile``) are saved and loaded as the
module they wrap (``training/wrapped.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import CheckpointError
from .fastload import prefill_module
from .training.data import refuse_plain_loader
from .training.wrapped import KeyMap, KeyReport, check_keys, match_keys, unwrap


def capture(name: str, obj: Any) -> Any:
    """The state to store for one saved object (no copy: ``state_dict()`` returns views).

    Args:
        name: the object's name (for messages).
        obj: an object with ``state_dict()`` (wrapped modules: the inner one's), a tensor, a
            ``torch.Generator``, or a dict.

    Returns:
        The state to store.

    Raises:
        TypeError: nothing torchckpt knows how to store (a plain ``DataLoader``: the message names the recipe).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, torch.nn.Module):
        return unwrap(obj).state_dict()
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    refuse_plain_loader(name, obj, "save")
    raise TypeError(
        f"cannot save {name}={type(obj).__name__}: pass an object with state_dict(), a tensor, or a dict of tensors"
    )


def match_module_state(
    name: str, module: torch.nn.Module, state: Any, strict: bool, key_map: KeyMap | None = None
) -> tuple[Any, KeyReport]:
    """A saved module state renamed for ``module`` (wrapped or not), and how its keys matched.

    Args:
        name: the object's name (for messages).
        module: the live module (DDP / DataParallel / compiled wrappers are looked through).
        state: what was saved for it.
        strict: with strict, ``load_state_dict`` reports differences itself.
        key_map: ``fn(saved_key) -> new key | None (drop)`` applied first.

    Returns:
        The state to pass to ``load_into`` and the missing / unexpected keys.

    Raises:
        NoMatchingKeysError: not strict, and none of the module's keys would be loaded.
    """
    target_keys = list(unwrap(module).state_dict(keep_vars=True))
    state = match_keys(state, target_keys, key_map)
    return state, check_keys(name, state, target_keys, strict)


def optimizer_owned(objects: Mapping[str, Any]) -> frozenset[int]:
    """Data pointers of the CPU tensors only an optimizer step changes: saved optimizers' parameters and state.

    An async save may copy these after it returns (the next ``step`` waits for the copy).
    Parameters of a module saved without its optimizer are not among them: something
    else (an EMA update, say) may change them.
    """
    ptrs: set[int] = set()
    for obj in objects.values():
        if not isinstance(obj, torch.optim.Optimizer):
            continue
        tensors = [p for group in obj.param_groups for p in group["params"]]
        tensors += [t for s in obj.state.values() if isinstance(s, Mapping) for t in s.values()]
        ptrs.update(t.data_ptr() for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cpu")
    ptrs.discard(0)
    return frozenset(ptrs)


def load_into(name: str, obj: Any, state: Any, strict: bool) -> None:
    """Put ``state`` into the live object ``obj`` in place.

    Args:
        name: the object's name (for messages).
        obj: a module (wrapped or not; keys as ``match_module_state`` returns them), optimizer,
            scheduler, anything with ``load_state_dict``, a ``torch.Generator``, a tensor or a dict.
        state: what was saved for it.
        strict: modules: every key must match; dicts: the same keys.

    Raises:
        CheckpointError: a dict's keys differ under ``strict``.
        TypeError: ``obj`` cannot be restored into.
    """
    if isinstance(obj, torch.nn.Module):
        module = unwrap(obj)
        module.load_state_dict(prefill_module(module, state), strict=strict)
        return
    if isinstance(obj, torch.Generator):
        obj.set_state(state.cpu())
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    elif isinstance(obj, torch.Tensor):
        with torch.no_grad():
            obj.copy_(state)
    elif isinstance(obj, dict):
        if strict and set(obj) != set(state):
            raise CheckpointError(f"{name}: keys differ from the saved ones {sorted(state)} (pass strict=False)")
        for key, value in state.items():
            if isinstance(obj.get(key), torch.Tensor) and isinstance(value, torch.Tensor):
                with torch.no_grad():
                    obj[key].copy_(value)
            else:
                obj[key] = value
    else:
        refuse_plain_loader(name, obj, "restore into")
        raise TypeError(f"cannot restore into {name}={type(obj).__name__}: expected state_dict owner, tensor or dict")
