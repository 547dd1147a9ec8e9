"""Crash consistency: a writer process saving in a loop is SIGKILLed at random moments.

After every kill the root must list only complete versions that load bit-exactly,
the newest save that returned must be listed, a new save must work, and
``gc(older_than=0)`` must leave no staging folder, no folder without ``meta.json``
and no stray temp file. 16 kills on a local disk and 8 on S3 (moto) run here;
``benchmarks/stress_kill.py`` runs the same cycle 200+ times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from _writer import Tally, Zygote, check_after_kill, check_repair

LOCAL_KILLS = 16
S3_KILLS = 8


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    log = tmp_path_factory.mktemp("zygote") / "stderr.txt"
    z = Zygote(stderr_path=str(log))
    yield z
    z.close()


def campaign(zygote: Zygote, backend, tmp_path, kills: int, delays: tuple[float, float], seed: int) -> Tally:
    rng = random.Random(seed)
    mgr = backend.manager()
    tally = Tally()
    for i in range(kills):
        progress = tmp_path / f"progress-{i}.txt"
        job = {
            "kind": "saves",
            "root": backend.url,
            "storage_options": backend.storage_options,
            "start": i * 1000,  # the step's thousand also picks the tensor size
            "keep_last": rng.choice([None, 2, 3]),  # so kills also land inside prunes
            "progress": str(progress),
        }
        pid = zygote.fork(job)
        time.sleep(rng.uniform(*delays))
        status = zygote.kill(pid)
        assert status == -9, f"writer exited with {status} before the kill (see the zygote's stderr)"
        tally.kills += 1
        check_after_kill(mgr, str(progress), tally, step=i * 1000 + 999)
    check_repair(mgr, tally)
    print(f"{backend.kind}: {tally.as_dict()}")
    return tally


def test_sigkill_local(zygote: Zygote, local_backend, tmp_path) -> None:
    tally = campaign(zygote, local_backend, tmp_path, LOCAL_KILLS, (0.0, 0.15), seed=1)
    assert tally.kills == LOCAL_KILLS
    assert tally.saves_after_kill == LOCAL_KILLS


def test_sigkill_s3(zygote: Zygote, s3_backend, tmp_path) -> None:
    tally = campaign(zygote, s3_backend, tmp_path, S3_KILLS, (0.05, 0.8), seed=2)
    assert tally.kills == S3_KILLS
