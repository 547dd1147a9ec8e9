"""Concurrent writers and concurrent pruning on one root.

* 2 and 4 processes x 50 saves on one root (local disk: file lock; S3: conditional
  PUTs): every save that returned is listed exactly once, nothing else is.
* A process pruning (``keep_last=1``) and running ``gc`` (default-style grace) in a
  loop while another saves: the saver loads each version right after its save
  returned, so a prune or gc that touched an in-progress or just-committed version
  fails the run.
* Threads (what docs/guarantees.md promises): several threads saving through one
  manager, several managers in one process, a thread pruning meanwhile.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _writer import Zygote, assert_version_ok, root_entries, tensors_for
from torchckpt import CheckpointManager, CheckpointNotFoundError, RetentionPolicy
from torchckpt.errors import SingleWriterWarning

SAVES = 50
SAVES_PER_THREAD = 5


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(stderr_path=str(tmp_path_factory.mktemp("zygote") / "stderr.txt"))
    yield z
    z.close()


def job(backend: Any, **kw: Any) -> dict[str, Any]:
    return {"root": backend.url, "storage_options": backend.storage_options, **kw}


def returned(progress: Path) -> list[tuple[int, str]]:
    return [(int(a), b) for a, b in (ln.split() for ln in progress.read_text().splitlines())]


#: (backend, writers): azure and gcs (emulator honouring preconditions) must be as safe as s3;
#: gcs_ignoring is the emulator as shipped: detected, and single-writer mode's lease loses nothing.
PROCESS_CASES = [("local", 2), ("local", 4), ("s3", 2), ("s3", 4), ("azure", 2), ("gcs", 2), ("gcs_ignoring", 2)]


@pytest.mark.parametrize(("kind", "writers"), PROCESS_CASES)
def test_processes_saving_lose_nothing(zygote: Zygote, request: Any, tmp_path: Path, kind: str, writers: int) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    ignoring = kind == "gcs_ignoring"
    if ignoring:
        with pytest.warns(SingleWriterWarning, match="concurrent writers to this root are not safe"):
            mgr = backend.manager()  # create the root and probe it
        assert not mgr.storage.multi_writer_safe
    else:
        mgr = backend.manager()
        assert mgr.storage.multi_writer_safe
    progress = [tmp_path / f"w{i}.txt" for i in range(writers)]
    warned = [tmp_path / f"warnings{i}.txt" for i in range(writers)]
    env = {"TORCHCKPT_LEASE_SETTLE_S": "0.2"} if ignoring else {}  # keep the lease's wait short on 127.0.0.1
    # steps i*3000 + n: distinct per writer, and the smallest tensor size (see tensors_for)
    pids = [
        zygote.fork(
            job(backend, kind="saves", start=i * 3000, count=SAVES, progress=str(p), env=env, warnings_out=str(w))
        )
        for i, (p, w) in enumerate(zip(progress, warned, strict=True))
    ]
    assert [zygote.wait(pid) for pid in pids] == [0] * writers
    for w in warned:  # every writer process knew (from the root's probe marker) whether it was safe
        assert ("SingleWriterWarning" in w.read_text()) == ignoring
    saved = [v for p in progress for _, v in returned(p)]
    assert len(saved) == writers * SAVES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleWriterWarning)  # checked above
        mgr = backend.manager()
    listed = [v.version for v in mgr.list()]
    print(
        f"\nTALLY {kind}: {writers} processes x {SAVES} saves: {len(set(listed) & set(saved))} listed, "
        f"{len(set(saved) - set(listed))} lost"
    )
    assert sorted(listed) == sorted(saved), "a concurrent writer's version was lost or duplicated"
    committed, leftovers, strays = root_entries(mgr)
    assert sorted(committed) == sorted(saved) and leftovers == [] and strays == []
    # every writer's own versions are in its commit order
    for p in progress:
        mine = [v for _, v in returned(p)]
        assert [v for v in listed if v in set(mine)] == mine
    for info in mgr.list()[:: 1 if kind == "local" else 10]:
        assert_version_ok(mgr, info)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_prune_and_gc_while_another_process_saves(zygote: Zygote, request: Any, tmp_path: Path, kind: str) -> None:
    backend = request.getfixturevalue(f"{kind}_backend")
    mgr = backend.manager()
    stop, saves, prunes = tmp_path / "stop", tmp_path / "saves.txt", tmp_path / "prunes.txt"
    pruner = zygote.fork(job(backend, kind="prune_loop", stop=str(stop), progress=str(prunes), gc_grace=60))
    saver = zygote.fork(
        job(
            backend,
            kind="saves",
            start=0,
            count=SAVES // 2 if kind == "s3" else SAVES,
            progress=str(saves),
            check_after_save=True,
        )
    )
    saver_status = zygote.wait(saver)
    stop.touch()
    assert (saver_status, zygote.wait(pruner)) == (0, 0)
    saved = [v for _, v in returned(saves)]
    removed = [v for line in prunes.read_text().splitlines() for v in line.split()]
    assert len(removed) > 0, "the pruner never overlapped the saver"
    assert saved[-1] not in removed and mgr.latest().version == saved[-1]
    assert set(removed) <= set(saved)
    mgr.prune(RetentionPolicy(keep_last=1))  # the pruner may have stopped just before the last commit
    assert [v.version for v in mgr.list()] == [saved[-1]]
    assert mgr.verify().ok
    mgr.gc(older_than=0)
    _, leftovers, strays = root_entries(mgr)
    assert leftovers == [] and strays == []


# ----- threads ---------------------------------------------------------------------------------------
def run_threads(targets: list[Any]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_threads_share_one_manager_and_managers_share_a_process(backend: Any) -> None:
    """4 threads on one manager + 2 threads on a second manager + 1 thread pruning, all at once."""
    shared = backend.manager()
    other = backend.manager()
    saved: list[str] = []
    lock = threading.Lock()

    def saver(mgr: CheckpointManager, base: int) -> Any:
        def run() -> None:
            for n in range(SAVES_PER_THREAD):
                info = mgr.save(base + n, model=tensors_for(base + n))
                try:  # other threads commit newer versions, so the pruner may remove this one at any time
                    assert_version_ok(mgr, info)
                except CheckpointNotFoundError as exc:
                    assert info.version in str(exc)
                with lock:
                    saved.append(info.version)

        return run

    done = threading.Event()

    def pruner() -> None:
        mgr = backend.manager()
        while not done.is_set():
            mgr.prune(RetentionPolicy(keep_last=4))
            mgr.gc(older_than=60)
            newest = mgr.latest()
            if newest is not None:
                try:  # pin and unpin race the savers' manifest updates; removal meanwhile is the only excuse
                    mgr.pin(newest)
                    mgr.unpin(newest)
                except CheckpointNotFoundError:
                    pass
            done.wait(0.01)

    savers = [saver(shared, i * 3000) for i in range(4)] + [saver(other, (4 + i) * 3000) for i in range(2)]
    prune_thread = threading.Thread(target=pruner)
    prune_thread.start()
    try:
        run_threads(savers)
    finally:
        done.set()
        prune_thread.join()
    assert len(saved) == 6 * SAVES_PER_THREAD
    listed = [v.version for v in shared.list()]
    assert len(listed) >= 4 and set(listed) <= set(saved)
    assert not any(v.pinned for v in shared.list())
    shared.prune(RetentionPolicy(keep_last=4))
    assert shared.verify().ok
    # without the pruner nothing is lost either
    before = {v.version for v in shared.list()}
    extra: list[str] = []

    def more(mgr: CheckpointManager, base: int) -> Any:
        def run() -> None:
            for n in range(3):
                info = mgr.save(base + n, model=tensors_for(base + n))
                with lock:
                    extra.append(info.version)

        return run

    run_threads([more(shared, 30000), more(shared, 33000), more(other, 36000)])
    assert {v.version for v in shared.list()} == before | set(extra)
