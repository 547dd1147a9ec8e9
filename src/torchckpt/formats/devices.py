"""Device remapping: ``map_location`` rules, and the default that never crashes on a missing device.

The default (``None``) keeps a tensor on the device it was saved on when this
machine has that device, and puts it on the CPU otherwise: a checkpoint written
on ``cuda:0`` restores on a laptop with no argument at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

#: What ``map_location`` accepts: what ``torch.load`` accepts.
MapLocation = None | str | torch.device | Mapping[str, str] | Callable[..., Any]


def device_available(location: str) -> bool:
    """Whether ``location`` (e.g. ``"cuda:1"``) names a device this machine has."""
    try:
        dev = torch.device(location)
    except (RuntimeError, TypeError):
        return False
    if dev.type in ("cpu", "meta"):
        return True
    mod = getattr(torch, dev.type, None)
    try:
        if mod is None or not mod.is_available():
            return False
        return dev.index is None or dev.index < mod.device_count()
    except Exception:  # a backend module without the usual probes
        return False


def _keep_or_cpu(storage: Any, location: str) -> Any:
    """Default ``map_location``: stay on an available device, fall back to the CPU otherwise."""
    if device_available(location):
        return None  # torch's default restore onto ``location``
    log.debug("device %s is not available here; loading onto the CPU", location)
    return storage


def resolve_map_location(map_location: MapLocation) -> MapLocation:
    """What ``torch.load`` gets: the caller's ``map_location``, or keep-or-CPU for ``None``."""
    return _keep_or_cpu if map_location is None else map_location


def place(t: torch.Tensor, saved_on: str, map_location: Any) -> torch.Tensor:
    """Apply ``torch.load``'s ``map_location`` rules to one tensor read onto the CPU."""
    if map_location is None:
        target: Any = saved_on if device_available(saved_on) else "cpu"
    elif isinstance(map_location, (str, torch.device)):
        target = map_location
    elif isinstance(map_location, Mapping):
        target = map_location.get(saved_on, saved_on)
    elif callable(map_location):
        result = map_location(t.untyped_storage(), saved_on)
        if result is None:
            target = saved_on
        elif isinstance(result, (torch.UntypedStorage, torch.TypedStorage)):
            target = result.device
        else:
            raise TypeError(f"map_location returned {type(result).__name__}, expected a storage or None")
    else:
        raise TypeError(f"unsupported map_location {map_location!r}")
    target = torch.device(target)
    return t if target.type == "cpu" and t.device.type == "cpu" else t.to(target)
