"""Stored formats: how a version's state becomes files, found again from its record.

* ``torch`` (``formats/torch_file.py``): one ``state.pt``.
* ``safetensors`` (``formats/safetensors_file.py``): ``<name>.safetensors`` per object + ``state.pt``.
* ``dcp`` layout (``formats/dcp.py``): shard files written by every rank through DCP.
* ``files`` layout (``formats/files.py``): a folder of a framework's files (``save_files``).

Adding a format is one module with a ``Format`` subclass plus one ``register_format`` line.
"""

from __future__ import annotations

from importlib import import_module

from ..records import CheckpointInfo
from .base import FileRecords, Format, TensorRow
from .devices import MapLocation

_FORMATS: dict[str, str | Format] = {}
#: Formats a single process can save with (``CheckpointManager(format=...)``).
SAVE_FORMATS = ("torch", "safetensors")


def register_format(name: str, fmt: str | Format) -> None:
    """Make ``fmt`` the reader/writer for records whose format (or layout) is ``name``.

    Args:
        name: the value in ``CheckpointInfo.format`` / ``layout``.
        fmt: a ``Format`` instance, or ``"module:Class"`` to import lazily.
    """
    _FORMATS[name] = fmt


register_format("torch", "torchckpt.formats.torch_file:TorchFormat")
register_format("safetensors", "torchckpt.formats.safetensors_file:SafetensorsFormat")
register_format("dcp", "torchckpt.formats.dcp:DcpFormat")  # imported only when a sharded version is read
register_format("files", "torchckpt.formats.files:FilesFormat")  # folder versions (save_files)


def get_format(name: str) -> Format:
    """The registered format called ``name``.

    Raises:
        ValueError: no such format.
    """
    found = _FORMATS.get(name)
    if found is None:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(sorted(_FORMATS))}")
    if isinstance(found, str):
        module, _, cls = found.partition(":")
        found = getattr(import_module(module), cls)()
        _FORMATS[name] = found
    return found


def format_of(info: CheckpointInfo) -> Format:
    """The format that reads the version ``info`` (its layout first: sharded versions are DCP)."""
    return get_format(info.layout if info.layout != "single" else info.format)


__all__ = [
    "FileRecords",
    "Format",
    "MapLocation",
    "SAVE_FORMATS",
    "TensorRow",
    "format_of",
    "get_format",
    "register_format",
]
