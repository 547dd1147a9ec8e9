"""Training-loop helpers: when to save, preemption signals, data-parallel ranks, wrapped models, data position.

* ``schedule.py``: ``SaveSchedule`` (every N steps / T seconds / after a preemption
  signal; the same answer on every rank);
* ``preemption.py``: ``PreemptionHandler`` (flag-only signal handlers, chained);
* ``ranks.py``: which rank writes replicated state, one-``all_reduce`` agreement;
* ``wrapped.py``: DDP / DataParallel / ``torch.compile`` unwrapping and key matching;
* ``data.py``: ``ResumableSampler`` for exact mid-epoch resume with a plain ``DataLoader``.

``CheckpointManager`` exposes these as ``save_every_steps``, ``save_every_seconds``,
``preemption_signals``, ``should_save``, ``maybe_save``, ``preempted`` and
``restore(..., key_map=, missing_ok=)``.
"""

from __future__ import annotations

from .data import ResumableSampler
from .preemption import PreemptionHandler
from .schedule import SaveSchedule
from .wrapped import KeyReport, unwrap

__all__ = ["KeyReport", "PreemptionHandler", "ResumableSampler", "SaveSchedule", "unwrap"]
