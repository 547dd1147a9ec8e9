"""Version selectors: what ``"latest"``, ``"best"``, a step, an id or a record mean in a list.

Resolution works on a list already read (one manifest read per call, and a
fallback restore can resolve among versions found without a readable manifest).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import CheckpointNotFoundError
from .layout import check_version_id, is_version_name
from .records import CheckpointInfo
from .retention import RetentionPolicy

#: What ``version=`` accepts.
Selector = str | int | CheckpointInfo


def best(
    versions: list[CheckpointInfo],
    metric: str | None = None,
    mode: str | None = None,
    retention: RetentionPolicy | None = None,
) -> CheckpointInfo | None:
    """The version with the best ``metric`` (default: the retention policy's); ties go to the newest.

    Args:
        versions: the candidates, oldest first.
        metric: the metric to rank by (default: ``retention.metric``).
        mode: ``"min"`` or ``"max"`` (default: the policy's mode for its metric, else ``"min"``).
        retention: where the defaults come from.

    Returns:
        The best version, or None when no version has the metric.

    Raises:
        ValueError: no metric, or a bad mode.
    """
    metric = metric or (retention.metric if retention else None)
    mode = mode or (retention.mode if retention and retention.metric == metric else "min")
    if not metric:
        raise ValueError("best() needs metric=NAME (or a RetentionPolicy with metric)")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    scored = [
        v for v in versions if isinstance(v.metrics.get(metric), (int, float)) and not math.isnan(v.metrics[metric])
    ]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(reversed(scored), key=lambda v: v.metrics[metric])


def resolve(
    versions: list[CheckpointInfo], version: Selector, *, root_url: str, retention: RetentionPolicy | None = None
) -> CheckpointInfo:
    """Turn a selector into one of ``versions``.

    Args:
        versions: the listed versions, oldest first.
        version: ``"latest"``, ``"best"``, a step (int), a version id, a version name, or a ``CheckpointInfo``.
        root_url: for the error message.
        retention: supplies the metric of ``"best"``.

    Returns:
        The selected version.

    Raises:
        CheckpointNotFoundError: nothing matches; the message names what exists.
        TypeError: ``version`` is not a selector.
    """
    found: CheckpointInfo | None = None
    if isinstance(version, CheckpointInfo):
        version = version.version
    if version == "latest":
        found = versions[-1] if versions else None
    elif version == "best":
        found = best(versions, retention=retention)
    elif isinstance(version, int) and not isinstance(version, bool):
        found = next((v for v in reversed(versions) if v.step == version), None)
    elif isinstance(version, str):
        if not is_version_name(version):
            check_version_id(version)  # neither an id nor a name: refused (paths, odd characters)
        found = next((v for v in versions if v.version == version), None)
        if found is None:  # a caller-chosen name (``save_files(..., name=)``), unique among listed versions
            found = next((v for v in reversed(versions) if v.name == version), None)
    else:
        raise TypeError(f"version must be 'latest', 'best', a step, an id, a name or a CheckpointInfo, not {version!r}")
    if found is None:
        raise CheckpointNotFoundError(not_found_message(version, versions, root_url))
    return found


def not_found_message(version: Any, versions: list[CheckpointInfo], root: str) -> str:
    """``no version X in ROOT; it has ...`` naming the newest few."""
    if not versions:
        return f"no version {version!r}: {root} holds no committed versions yet"
    shown = ", ".join(f"{v.version} (step {v.step})" for v in versions[-5:])
    more = f" and {len(versions) - 5} older" if len(versions) > 5 else ""
    return f"no version {version!r} in {root}; it has {shown}{more}"


def restore_candidates(
    versions: list[CheckpointInfo],
    version: Selector,
    *,
    fallback: bool,
    root_url: str,
    retention: RetentionPolicy | None = None,
) -> list[CheckpointInfo]:
    """What a restore tries, in order: the selected version, then (with ``fallback``) the older ones, newest first.

    With ``fallback``, ``"latest"`` that resolves to nothing still tries the newest listed version.

    Raises:
        CheckpointNotFoundError: nothing matches.
    """
    try:
        chosen = resolve(versions, version, root_url=root_url, retention=retention)
    except CheckpointNotFoundError:
        if not (fallback and version == "latest" and versions):
            raise
        chosen = versions[-1]
    if not fallback:
        return [chosen]
    idx = next(i for i, v in enumerate(versions) if v.version == chosen.version)
    return [chosen, *reversed(versions[:idx])]
