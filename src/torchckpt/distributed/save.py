"""Collective sharded save: every rank calls ``save_sharded`` with the same arguments.

Call order (the ``Collectives`` wrapper turns a failure on any rank into the
same failure on every rank, so no rank waits forever):

1. rank 0 chooses the version id and the folder to write into; broadcast;
2. every rank captures its state (a local failure is shared before DCP starts);
3. DCP writes every rank's shards and the coordinator's ``.metadata`` through
   the checksumming adapter (``formats/dcp_io.py``);
4. the per-rank file records are gathered on rank 0, checked against a listing
   of the folder, and committed through the one commit path
   (``lifecycle.commit_version``: ``meta.json`` with ``layout="dcp"``, the
   manifest update with retention in the same update); the record is broadcast.

A failure on any rank commits nothing; rank 0 removes what was written and
``gc`` catches anything left behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from .. import rng
from ..errors import CheckpointError
from ..formats.dcp_io import (
    LAYOUT,
    METADATA_FILE,
    CheckpointException,
    Prestaged,
    Writer,
    dcp,
    dcp_error,
    quiet_single_process,
)
from ..formats.pickling import check_safe
from ..layout import META, new_version_id, version_dir
from ..lifecycle import commit_version
from ..records import CheckpointInfo, new_version_info
from ..retention import RetentionPolicy
from ..storage import Storage, VersionWriter
from .collectives import Collectives
from .state import capture_sharded, without_shards

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1


def save_sharded(
    storage: Storage,
    retention: RetentionPolicy | None,
    objects: Mapping[str, Any],
    *,
    step: int,
    epoch: int | None,
    metrics: dict[str, float | None],
    tags: tuple[str, ...],
    extra: dict[str, Any],
) -> CheckpointInfo:
    """Save ``objects`` as one sharded version; every rank calls it and gets the same record.

    Args:
        storage: the root.
        retention: applied by rank 0 in the commit's manifest update.
        objects: name -> live object (modules, optimizers, tensors, dicts).
        step: the training step.
        epoch: the epoch, if any.
        metrics: recorded metrics.
        tags: recorded tags.
        extra: JSON-able values and tensors stored beside the state.

    Returns:
        The committed version's record.

    Raises:
        CheckpointError: any rank failed; nothing was committed.
    """
    return begin_sharded_save(
        storage, retention, objects, step=step, epoch=epoch, metrics=metrics, tags=tags, extra=extra, background=False
    )()


def begin_sharded_save(
    storage: Storage,
    retention: RetentionPolicy | None,
    objects: Mapping[str, Any],
    *,
    step: int,
    epoch: int | None,
    metrics: dict[str, float | None],
    tags: tuple[str, ...],
    extra: dict[str, Any],
    background: bool,
    stage: Callable[[Any], Any] | None = None,
) -> Callable[[], CheckpointInfo]:
    """Start a sharded save; the returned function finishes it (writes what is left, commits).

    With ``background=True`` the state is staged into host memory here (DCP's
    ``async_save``: the caller is blocked for that copy only) and the returned
    function, meant for a worker thread, waits for DCP's write and commits; its
    collectives run on a gloo side group (``Collectives.side_channel``), never on
    the group training uses. Without it, DCP writes here and the function commits.

    Args:
        storage: the root.
        retention: applied by rank 0 in the commit's manifest update.
        objects: name -> live object.
        step: the training step.
        epoch: the epoch, if any.
        metrics: recorded metrics.
        tags: recorded tags.
        extra: JSON-able values and tensors stored beside the state.
        background: stage now, write and commit in the returned function.
        stage: with ``background``, makes the host copy (e.g. ``StagingPool.snapshot``: buffers reused
            across saves); None: DCP's own staging (fresh buffers every save).

    Returns:
        A function (every rank calls it) returning the committed version's record.

    Raises:
        CheckpointError: any rank failed while choosing the id or capturing the state.
    """
    group = Collectives()
    started = time.perf_counter()
    what = f"sharded save of step {step}"

    writer: VersionWriter | None = None
    plan: tuple[str, str, str] | None = None
    if group.is_coordinator:
        created = datetime.now(timezone.utc)
        vid = new_version_id(step, created)
        writer = storage.version_writer(version_dir(vid))
        plan = (vid, created.isoformat(), writer.work_dir)
    vid, created_iso, work_dir = group.broadcast(plan)
    created = datetime.fromisoformat(created_iso)

    def capture_state() -> dict[str, Any]:
        state = {
            "torchckpt": {"payload": PAYLOAD_VERSION, "world_size": group.world},
            "objects": {name: capture_sharded(name, obj, objects) for name, obj in objects.items()},
            "extra": extra,
            "rng": {f"rank{group.rank}": rng.capture()},
        }
        check_safe(without_shards(state), "state")
        return state

    try:
        state = group.all_or_none(capture_state, what)
        side = group.side_channel() if background else group
    except Exception:
        if writer is not None:
            writer.abort()
        raise

    def failed(exc: BaseException) -> BaseException:
        if writer is not None:  # DCP raised on every rank after all ranks finished writing
            writer.abort()
        if isinstance(exc, CheckpointException):
            return dcp_error(exc, f"{what} to {storage.root_url}")
        return exc

    fs_writer = Writer(storage, work_dir)
    pending: Any = None
    try:
        with quiet_single_process(not group.active):
            if background:  # stages (copies) the state now; writes on DCP's thread
                stager = None
                if stage is not None:
                    state, stager = stage(state), Prestaged()
                pending = dcp.async_save(
                    state,
                    storage_writer=fs_writer,
                    process_group=side.group,
                    no_dist=not group.active,
                    async_stager=stager,
                )
            else:
                dcp.save(state, storage_writer=fs_writer, no_dist=not group.active)
    except (Exception, CheckpointException) as exc:
        raise failed(exc) from exc
    del state
    staged_s = time.perf_counter() - started

    def finish() -> CheckpointInfo:
        if pending is not None:
            try:
                with quiet_single_process(not group.active):
                    pending.result()
            except (Exception, CheckpointException) as exc:
                raise failed(exc) from exc
        records = side.gather(fs_writer.fs.written)  # (StorageFS: see formats/dcp_io.Writer)

        def commit() -> dict[str, Any]:
            assert writer is not None
            try:
                info = _commit(
                    storage,
                    retention,
                    writer,
                    records,
                    vid=vid,
                    created=created,
                    step=step,
                    epoch=epoch,
                    metrics=metrics,
                    tags=tags,
                    objects=tuple(objects),
                    world=side.world,
                )
            except Exception:
                writer.abort()
                raise
            return info.to_record(with_index_fields=False)

        record = side.on_coordinator(commit, f"committing sharded step {step}")
        info = CheckpointInfo.from_record(record, storage.url(version_dir(vid)))
        side.barrier()  # everybody leaves together
        log.info(
            "saved sharded %s from %d rank(s) in %.2fs%s",
            vid,
            side.world,
            time.perf_counter() - started,
            f" (caller blocked {staged_s:.3f}s)" if background else "",
        )
        return info

    return finish


def _commit(
    storage: Storage,
    retention: RetentionPolicy | None,
    writer: VersionWriter,
    records: Sequence[Mapping[str, Mapping[str, Any]]],
    *,
    vid: str,
    created: datetime,
    step: int,
    epoch: int | None,
    metrics: dict[str, float | None],
    tags: tuple[str, ...],
    objects: tuple[str, ...],
    world: int,
) -> CheckpointInfo:
    files: dict[str, dict[str, Any]] = {}
    for per_rank in records:
        files.update({k: dict(v) for k, v in (per_rank or {}).items()})
    if METADATA_FILE not in files:
        raise CheckpointError(f"DCP wrote no {METADATA_FILE} for {vid}")
    listed = set(storage.list_names(writer.work_dir))
    unknown = sorted(listed - set(files) - {META})
    missing = sorted(set(files) - listed)
    if missing or unknown:
        raise CheckpointError(f"files of {vid} do not match what the ranks wrote: missing {missing}, unknown {unknown}")
    info = new_version_info(
        vid,
        files=dict(sorted(files.items())),
        url=storage.url(version_dir(vid)),
        created_at=created,
        step=step,
        epoch=epoch,
        metrics=metrics,
        tags=tags,
        objects=objects,
        layout=LAYOUT,
    )
    commit_version(storage, writer, info, retention, meta_extra={"world_size": world})
    return info
