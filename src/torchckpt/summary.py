"""Tensor summaries of a stored version (names, shapes, dtypes) for ``torchckpt show``.

Each format summarises as cheaply as it can: sharded versions from DCP's
metadata, safetensors versions from the files' headers, torch versions by
loading ``state.pt`` (verified) onto the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .formats import TensorRow, format_of
from .selectors import Selector

if TYPE_CHECKING:
    from .manager import CheckpointManager

#: One stored tensor: ``name`` (dotted path, e.g. ``"model.0.weight"``), ``shape``, ``dtype``, ``numel``.
TensorSummary = TensorRow


def tensor_summary(manager: CheckpointManager, version: Selector = "latest") -> list[TensorSummary]:
    """Every tensor of a version's saved objects.

    Args:
        manager: the root's manager.
        version: which version.

    Returns:
        One row per tensor, in the saved order.

    Raises:
        CheckpointNotFoundError: no such version.
        ChecksumMismatchError: a file read for the summary is corrupt.
    """
    info = manager.info(version)  # the resolved version, even if a save lands meanwhile
    return format_of(info).summarize(manager.storage, info)
