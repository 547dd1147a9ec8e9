"""Any other fsspec filesystem: correct for one writer at a time.

Without a conditional write or a lock that works across machines, two writers
updating one root's manifest at the same moment could lose one version from the
index (its data stays, and ``torchckpt repair`` lists it again). The manager
warns once per root (``SingleWriterWarning``); use one writer per root there.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Storage


class GenericStorage(Storage):
    """A folder on an fsspec filesystem torchckpt has no dedicated backend for."""

    multi_writer_safe = False
    kind: ClassVar[str] = "generic"
