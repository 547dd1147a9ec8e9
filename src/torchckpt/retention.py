"""Which versions to keep: a union of simple rules, with the newest and pinned always safe.

A version is kept when ANY configured rule keeps it (like Orbax's
``AnyPreservationPolicy``). The newest committed version is never removed, so
training can always resume (Orbax #526 evicted it), nor is a pinned one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .records import CheckpointInfo


@dataclass(frozen=True)
class RetentionPolicy:
    """Rules for ``prune``; all ``None`` keeps everything.

    * ``keep_last``: the N most recently committed versions.
    * ``keep_every_n_steps``: versions whose step is a multiple of K.
    * ``keep_interval``: the first version of each interval (``timedelta`` or
      seconds), intervals aligned to the Unix epoch so the answer never depends
      on what was pruned before (like TF's ``keep_checkpoint_every_n_hours``).
    * ``keep_best`` + ``metric`` + ``mode``: the N best by a metric; versions
      without the metric are not ranked, and this rule alone never evicts them.

    Args:
        keep_last: keep the N most recently committed versions.
        keep_every_n_steps: keep versions whose step is a multiple of K.
        keep_interval: keep the first version of each interval (``timedelta`` or seconds).
        keep_best: keep the N best versions by ``metric``.
        metric: the metric ``keep_best`` (and ``best()``) ranks by.
        mode: ``"min"`` (lower is better) or ``"max"``.

    Raises:
        ValueError: a non-positive count or interval, ``keep_best`` without ``metric``, a bad ``mode``.
    """

    keep_last: int | None = None
    keep_every_n_steps: int | None = None
    keep_interval: timedelta | float | int | None = None
    keep_best: int | None = None
    metric: str | None = None
    mode: str = "min"

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_every_n_steps", "keep_best"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.keep_interval is not None:
            seconds = self.interval_seconds
            if seconds is None or not math.isfinite(seconds) or seconds <= 0:
                raise ValueError(f"keep_interval must be a positive duration, got {self.keep_interval!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ValueError(f"metric must be a non-empty metric name, got {self.metric!r}")
        if self.keep_best is not None and not self.metric:
            raise ValueError("keep_best needs metric=NAME (the metric to rank versions by)")

    @property
    def interval_seconds(self) -> float | None:
        """``keep_interval`` in seconds (None when unset or not a duration)."""
        if self.keep_interval is None:
            return None
        if isinstance(self.keep_interval, timedelta):
            return self.keep_interval.total_seconds()
        if isinstance(self.keep_interval, bool) or not isinstance(self.keep_interval, (int, float)):
            return None
        return float(self.keep_interval)

    @property
    def keeps_everything(self) -> bool:
        """True when no rule is set (nothing is ever removed)."""
        return all(v is None for v in (self.keep_last, self.keep_every_n_steps, self.keep_interval, self.keep_best))

    def to_remove(self, versions: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
        """The versions no rule keeps (never the newest, never a pinned one).

        Args:
            versions: the listed versions, oldest-committed first.

        Returns:
            The versions to remove, oldest first.
        """
        if self.keeps_everything or not versions:
            return []
        keep: set[str] = {versions[-1].version} | {v.version for v in versions if v.pinned}
        if self.keep_last is not None:
            keep.update(v.version for v in versions[-self.keep_last :])
        if self.keep_every_n_steps is not None:
            keep.update(v.version for v in versions if v.step % self.keep_every_n_steps == 0)
        if self.interval_seconds is not None:
            seen: set[int] = set()
            for v in sorted(versions, key=lambda i: (i.created_at, i.version)):
                bucket = math.floor(v.created_at.timestamp() / self.interval_seconds)
                if bucket not in seen:
                    seen.add(bucket)
                    keep.add(v.version)
        if self.keep_best is not None:
            # Ties go to the newer version, as in ``CheckpointManager.best()``, so the
            # version ``best()`` names is always one the best rule keeps.
            sign = 1.0 if self.mode == "min" else -1.0
            ranked = [(sign * m, -i, v) for i, v in enumerate(versions) if (m := _metric(v, self.metric)) is not None]
            ranked.sort(key=lambda r: (r[0], r[1]))
            keep.update(r[2].version for r in ranked[: self.keep_best])
            only_rule = self.keep_last is None and self.keep_every_n_steps is None and self.keep_interval is None
            if only_rule:  # the best rule alone never evicts what it cannot rank
                keep.update(v.version for v in versions if _metric(v, self.metric) is None)
        return [v for v in versions if v.version not in keep]


def _metric(info: CheckpointInfo, name: str | None) -> float | None:
    value = info.metrics.get(name) if name else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)
