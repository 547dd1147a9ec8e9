"""torchckpt: versioned, verified PyTorch training checkpoints on any fsspec storage."""

from __future__ import annotations

from typing import Any

from . import errors
from .errors import (
    AsyncSaveError,
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    ManifestError,
    NoMatchingKeysError,
    ReadOnlyError,
    StorageError,
    UnsafeCheckpointError,
)
from .maintenance import VerifyReport
from .manager import CheckpointManager
from .records import Checkpoint, CheckpointInfo
from .retention import RetentionPolicy

__version__ = "0.1.0"


def load_torchscript(url: str, *, map_location: Any = None, storage_options: Any = None, verify: bool = True) -> Any:
    """Load an exported TorchScript artifact (eval mode) without the model's class."""
    from .export import load_torchscript as _load

    return _load(url, map_location=map_location, storage_options=storage_options, verify=verify)


def load_program(
    url: str, *, map_location: Any = None, storage_options: Any = None, verify: bool = True, trust_pickle: bool = False
) -> Any:
    """Load a ``torch.export`` artifact; returns its module in eval mode (unsafe archives refused)."""
    from .export import load_program as _load

    return _load(
        url, map_location=map_location, storage_options=storage_options, verify=verify, trust_pickle=trust_pickle
    )


__all__ = [
    "CheckpointManager",
    "RetentionPolicy",
    "CheckpointInfo",
    "Checkpoint",
    "VerifyReport",
    "errors",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "UnsafeCheckpointError",
    "ManifestError",
    "NoMatchingKeysError",
    "StorageError",
    "ReadOnlyError",
    "AsyncSaveError",
    "load_torchscript",
    "load_program",
    "__version__",
]
