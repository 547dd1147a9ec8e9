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
    SingleWriterWarning,
    StorageError,
    UnsafeCheckpointError,
    UploadError,
)
from .maintenance import VerifyReport
from .manager import CheckpointManager
from .records import Checkpoint, CheckpointInfo
from .retention import RetentionPolicy

__version__ = "0.1.0"


def load_torchscript(url: str, *, map_location: Any = None, storage_options: Any = None, verify: bool = True) -> Any:
    """Load an exported TorchScript artifact (eval mode) without the model's class.

    Args:
        url: the artifact's URL (as returned by ``export_torchscript``) or any path.
        map_location: a device; None keeps each tensor's device, or the CPU where it is missing.
        storage_options: fsspec options for the URL.
        verify: check the artifact against the checksum its root's manifest records.

    Returns:
        The ``torch.jit.ScriptModule`` in eval mode.

    Raises:
        ChecksumMismatchError: the artifact differs from its record.
        CheckpointError: not a TorchScript archive.
    """
    from .export import load_torchscript as _load

    return _load(url, map_location=map_location, storage_options=storage_options, verify=verify)


def load_program(
    url: str, *, map_location: Any = None, storage_options: Any = None, verify: bool = True, trust_pickle: bool = False
) -> Any:
    """Load a ``torch.export`` artifact; returns its module in eval mode.

    Args:
        url: the artifact's URL (as returned by ``export_program``) or any path.
        map_location: a device to move the module's parameters and buffers to.
        storage_options: fsspec options for the URL.
        verify: check the artifact against the checksum its root's manifest records.
        trust_pickle: load archives that would unpickle arbitrary objects or native code.

    Returns:
        ``program.module()`` in eval mode.

    Raises:
        UnsafeCheckpointError: the archive needs arbitrary pickle (without ``trust_pickle``).
        ChecksumMismatchError: the artifact differs from its record.
    """
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
    "SingleWriterWarning",
    "AsyncSaveError",
    "UploadError",
    "load_torchscript",
    "load_program",
    "__version__",
]
