"""Wrapped modules and their keys: DDP, DataParallel and ``torch.compile`` save like the module they wrap.

``DistributedDataParallel(net).state_dict()`` names every key ``module.…`` and
``torch.compile(net)`` names it ``_orig_mod.…``, so a version saved from a
wrapper cannot be loaded into the bare module and vice versa. torchckpt saves
the innermost module's state, loads into the innermost module, and strips a
uniform ``module.`` / ``_orig_mod.`` prefix that an older version carries when
the target's keys lack it. A user ``key_map`` renames or drops keys for
anything else. A non-strict load that would load no key at all is refused
(a silent half-restore); partial matches are reported.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError, NoMatchingKeysError

#: Prefixes wrappers add to every key of the module they wrap.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

KeyMap = Callable[[str], "str | None"]


def _is_compiled(module: torch.nn.Module) -> bool:
    if "torch._dynamo" not in sys.modules:  # nothing was compiled in this process
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside any number of DDP / DataParallel / ``torch.compile`` wrappers.

    Args:
        module: a module, wrapped or not.

    Returns:
        The innermost module (``module`` itself when it is not a wrapper).
    """
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            inner = module.module
        elif _is_compiled(module):
            inner = module._orig_mod
        else:
            return module
        assert isinstance(inner, torch.nn.Module)
        module = inner


@dataclass
class KeyReport:
    """How a saved module state matched the module it was loaded into."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _rename(state: Mapping[str, Any], rename: Callable[[str], str | None]) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in state.items():
        new = rename(key)
        if new is None:
            continue
        if not isinstance(new, str):
            raise TypeError(f"key_map must return a str or None, got {type(new).__name__} for {key!r}")
        if new in out:
            raise CheckpointError(f"key_map maps two saved keys to {new!r}; each key must map to a distinct name")
        out[new] = value
    return out


def _strip_metadata(metadata: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    """``_metadata`` is keyed by module path: the wrapper's own entry goes, the rest lose the prefix."""
    head = prefix[:-1]
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in metadata.items():
        if key == head:
            out[""] = value
        elif key.startswith(prefix):
            out[key[len(prefix) :]] = value
    return out


def match_keys(state: Any, target_keys: list[str], key_map: KeyMap | None) -> Any:
    """``state`` renamed for a module whose state keys are ``target_keys``.

    ``key_map`` is applied first (to the saved keys); then a ``module.`` / ``_orig_mod.``
    prefix that every remaining key carries, and the target's keys do not, is stripped
    (repeatedly: ``_orig_mod.module.`` too).

    Args:
        state: the saved module state (returned as it is when not a mapping).
        target_keys: the keys of the live module's ``state_dict()``.
        key_map: ``fn(saved_key) -> new key | None (drop)``, or None.

    Returns:
        The state to load (the same object when nothing changed).

    Raises:
        TypeError: ``key_map`` returned something other than a str or None.
        CheckpointError: ``key_map`` mapped two keys to one name.
    """
    if not isinstance(state, Mapping):
        return state
    metadata = getattr(state, "_metadata", None)
    out = state
    if key_map is not None:
        out = _rename(state, key_map)
        if metadata is not None:
            out._metadata = metadata  # type: ignore[attr-defined]
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out) and not (
                target_keys and all(k.startswith(prefix) for k in target_keys)
            ):
                cut = len(prefix)
                stripped = _rename(out, lambda k, cut=cut: k[cut:])  # type: ignore[misc]
                meta = getattr(out, "_metadata", None)
                if meta is not None:
                    stripped._metadata = _strip_metadata(meta, prefix)  # type: ignore[attr-defined]
                out, changed = stripped, True
    return out


def check_keys(name: str, state: Any, target_keys: list[str], strict: bool) -> KeyReport:
    """Compare a (renamed) saved state with the live module's keys.

    Args:
        name: the object's name (for messages).
        state: the state about to be loaded.
        target_keys: the live module's keys.
        strict: with strict, torch's ``load_state_dict`` reports differences itself.

    Returns:
        The keys the module lacks in the state (missing) and the state's extra keys (unexpected).

    Raises:
        NoMatchingKeysError: not strict, the module has keys, and none of them would be loaded.
    """
    if not isinstance(state, Mapping):
        return KeyReport()
    saved = list(state)
    wanted = set(target_keys)
    report = KeyReport(
        missing=[k for k in target_keys if k not in state], unexpected=[k for k in saved if k not in wanted]
    )
    if not strict and target_keys and len(report.missing) == len(target_keys):
        raise NoMatchingKeysError(
            f"{name}: no saved key matches the module (saved e.g. {saved[:3]}, module expects e.g. "
            f"{target_keys[:3]}); strict=False would load nothing. Pass key_map=fn to rename saved keys "
            "(fn(key) -> new key, or None to drop it)"
        )
    return report
