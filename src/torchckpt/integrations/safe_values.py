"""Values frameworks put in checkpoints that a safe (``weights_only``) load cannot read, in a safe form.

Hyperparameters often hold a ``pathlib.Path``, an ``Enum`` member or an
``argparse.Namespace``; a ``weights_only`` load refuses them (they need
arbitrary unpickling). ``encode`` turns them into tagged plain dicts before a
save; ``decode`` rebuilds them after a safe load, without importing anything:

* paths come back as the same ``pathlib`` class (one of five known names);
* a namespace comes back as ``argparse.Namespace`` of its decoded fields;
* an enum member comes back only when its class is already imported (found in
  ``sys.modules``, checked to be an ``Enum``); otherwise its plain value is
  returned and a warning says which module to import first. Nothing named in a
  checkpoint is ever imported or called.

Dict subclasses (Lightning's ``AttributeDict``) are stored as plain dicts.
"""

from __future__ import annotations

import argparse
import enum
import logging
import pathlib
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

#: Key of a tagged value.
TAG = "__torchckpt_value__"
_PATH_CLASSES = {
    c.__name__: c
    for c in (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
}


def encode(value: Any) -> Any:
    """``value`` with every path, enum member, namespace and dict subclass in a safe, tagged form.

    Args:
        value: a checkpoint (nested dicts, lists, tuples, tensors, numbers, strings).

    Returns:
        A copy of the containers (tensors and leaves are shared, not copied).
    """
    if isinstance(value, enum.Enum):  # before str/int: a StrEnum member is also a str
        cls = type(value)
        return {
            TAG: "enum",
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "name": value.name,
            "value": encode(value.value),
        }
    if isinstance(value, pathlib.PurePath):
        return {TAG: "path", "class": type(value).__name__, "value": str(value)}
    if isinstance(value, argparse.Namespace):
        return {TAG: "namespace", "value": encode(vars(value))}
    if isinstance(value, OrderedDict):
        return OrderedDict((k, encode(v)) for k, v in value.items())
    if isinstance(value, Mapping):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(encode(v) for v in value)
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode`` (see the module docstring for what comes back as what)."""
    if isinstance(value, Mapping):
        kind = value.get(TAG) if isinstance(value.get(TAG), str) else None
        if kind == "path" and value.get("class") in _PATH_CLASSES:
            return _PATH_CLASSES[str(value["class"])](str(value["value"]))
        if kind == "namespace" and isinstance(value.get("value"), Mapping):
            return argparse.Namespace(**decode(value["value"]))
        if kind == "enum":
            return _enum_member(value)
        decoded = {k: decode(v) for k, v in value.items()}
        return OrderedDict(decoded) if isinstance(value, OrderedDict) else decoded
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    return value


def _enum_member(rec: Mapping[str, Any]) -> Any:
    module, _, qualname = str(rec.get("class", "")).partition(":")
    plain = decode(rec.get("value"))
    cls: Any = sys.modules.get(module)
    for part in qualname.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        try:
            return cls[str(rec.get("name"))]
        except KeyError:
            pass
    log.warning(
        "enum %s.%s is not imported (or has no member %s): kept its value %r; import %s before loading "
        "to get the member back",
        module,
        qualname,
        rec.get("name"),
        plain,
        module,
    )
    return plain


def types_in(value: Any) -> set[type]:
    """The non-plain classes ``decode`` produced inside ``value`` (for ``torch.serialization.safe_globals``)."""
    found: set[type] = set()
    if isinstance(value, (enum.Enum, pathlib.PurePath, argparse.Namespace)):
        found.add(type(value))
        if isinstance(value, argparse.Namespace):
            found |= types_in(vars(value))
    elif isinstance(value, Mapping):
        for v in value.values():
            found |= types_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= types_in(v)
    return found
