"""Sharded multi-rank versions through ``torch.distributed.checkpoint`` (DCP).

* ``collectives.py``: every collective behind one wrapper (a failure on any rank
  is raised on every rank);
* ``state.py``: what DCP stores for live modules and optimizers, and back;
* ``save.py`` / ``restore.py``: the collective save (committed through the one
  commit path) and restore (resharding).

The DCP storage adapter and single-process reading live in ``formats/dcp_io.py``
and ``formats/dcp.py``. Importing this package imports DCP (~0.7 s): the manager
only does so when a process group is up or ``distributed=True``.
"""

from __future__ import annotations

from .collectives import Collectives, process_group_active
from .restore import restore_sharded
from .save import begin_sharded_save, save_sharded
from .state import wants_sharded

__all__ = [
    "Collectives",
    "begin_sharded_save",
    "process_group_active",
    "restore_sharded",
    "save_sharded",
    "wants_sharded",
]
