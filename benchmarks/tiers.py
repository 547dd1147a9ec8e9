"""Tier benchmarks (issue 12): a local cache in front of an S3 root (moto), same-run ratios.

    python benchmarks/tiers.py --size 256MiB --reps 3

* T1: how long ``save`` blocks with ``cache=`` (local disk) vs a direct save to the S3 root. Target <= 0.2x.
* T2: restore on the same machine after the upload: S3 requests and data bytes read from the root
  (target: 0 data bytes), and the time vs a restore from a plain local-disk root. Target <= 1.10x.
* T3: upload throughput cache -> root (the background upload, timed by ``wait()``) vs a direct save to
  the root. Target >= 0.9x.

Each pair runs in the same process, alternating which goes first; medians with [min-max].
The moto server runs in a child process (benchmarks/run.py's ``moto_server``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (benchmarks/run.py: state, timing, moto server helpers)

from torchckpt import CheckpointManager  # noqa: E402


class ByteCounter:
    """Counts S3 requests by API name and the bytes GET returned, per key prefix."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.calls: dict[str, int] = {}
        self.data_bytes = 0  # bytes of GETs under versions/ (the data files)
        self.other_bytes = 0
        self._real = fs._call_s3

    async def _counting(self, method: str, *a: Any, **k: Any) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        resp = await self._real(method, *a, **k)
        if method == "get_object":
            n = int(resp.get("ContentLength", 0))
            if "/versions/" in str(k.get("Key", "")) or str(k.get("Key", "")).startswith("versions/"):
                self.data_bytes += n
            else:
                self.other_bytes += n
        return resp

    def __enter__(self) -> ByteCounter:
        from fsspec.asyn import sync

        self.fs._call_s3 = self._counting
        self.fs.call_s3 = lambda *a, **k: sync(self.fs.loop, self._counting, *a, **k)
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.fs._call_s3
        del self.fs.call_s3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=bench.parse_size, default=bench.parse_size("256MiB"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="local folder for the cache and the local root (default: temp)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    torch.manual_seed(0)
    info = bench.machine()
    print("machine:", json.dumps(info), flush=True)
    work = tempfile.mkdtemp(prefix="tiers-bench-", dir=args.dir)
    started = time.time()
    model, opt = bench.make_state(args.size)
    size = bench.state_bytes(model, opt)
    print(f"state: {bench.human(size)}", flush=True)
    try:
        with bench.moto_server() as endpoint:
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            opts = {"client_kwargs": {"endpoint_url": endpoint}}
            direct = CheckpointManager("s3://bench/direct", storage_options=opts)
            tiered = CheckpointManager(
                "s3://bench/tiered", storage_options=opts, cache=os.path.join(work, "cache"), cache_keep_last=1
            )
            local = CheckpointManager(os.path.join(work, "local"))
            step = [0]
            uploads: list[float] = []

            def direct_save() -> None:
                step[0] += 1
                direct.save(step[0], model=model, optimizer=opt)

            def tiered_save() -> float:
                step[0] += 1
                t0 = time.perf_counter()
                tiered.save(step[0], model=model, optimizer=opt)
                blocked = time.perf_counter() - t0
                t1 = time.perf_counter()
                tiered.wait()  # the background upload (T3): from the cache commit to listed in the root
                uploads.append(time.perf_counter() - t1)
                return blocked

            def tidy() -> None:  # outside the timing: keep moto's memory to one version per root
                for mgr in (direct, tiered):
                    for v in mgr.list()[:-1]:
                        mgr.delete(v)

            print("T1/T3: save to S3 directly vs save with a local cache (+ the background upload)", flush=True)
            td, tc = bench.alternate(direct_save, tiered_save, args.reps, tidy)
            ratio = statistics.median(tc) / statistics.median(td)
            bench.row(
                "T1",
                "save blocks: cache= (local) vs direct S3",
                bench.fmt(td),
                bench.fmt(tc),
                f"{ratio:.2f}x",
                "<= 0.20x",
                ratio <= 0.2,
            )
            thr_direct = size / statistics.median(td) / bench.MiB
            thr_upload = size / statistics.median(uploads) / bench.MiB
            ratio3 = thr_upload / thr_direct
            bench.row(
                "T3",
                "upload cache->S3 vs direct S3 save (throughput)",
                f"{bench.fmt(td)} = {thr_direct:.0f} MiB/s",
                f"{bench.fmt(uploads)} = {thr_upload:.0f} MiB/s",
                f"{ratio3:.2f}x",
                ">= 0.90x",
                ratio3 >= 0.9,
                "upload timed by wait(): copy + verify + list",
            )
            tidy()
            local.save(step[0], model=model, optimizer=opt)
            latest = tiered.latest()
            assert latest is not None and latest.tiers == ("cache", "root"), latest

            def local_restore() -> None:
                local.restore(model=model, optimizer=opt)

            def tiered_restore() -> None:
                tiered.restore(model=model, optimizer=opt)

            print("T2: restore after the upload: tiered (cache + S3 root) vs a local-disk root", flush=True)
            with ByteCounter(tiered.storage.fs) as counter:
                tl, tt = bench.alternate(local_restore, tiered_restore, 3 * args.reps)  # fast: more reps
            ratio2 = statistics.median(tt) / statistics.median(tl)
            n = 3 * args.reps
            per = {m: c / n for m, c in sorted(counter.calls.items())}
            bench.row(
                "T2",
                "restore: tiered vs local-disk root",
                bench.fmt(tl),
                bench.fmt(tt),
                f"{ratio2:.2f}x",
                "<= 1.10x",
                ratio2 <= 1.10,
            )
            bench.row(
                "T2",
                "  S3 reads per restore (from the root)",
                "-",
                f"{counter.data_bytes // n} data bytes, {counter.other_bytes // n} other",
                "-",
                "0 data bytes",
                counter.data_bytes == 0,
                f"requests per restore: {per}",
            )
            for mgr in (direct, tiered, local):
                mgr.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        info["loadavg_end"] = f.read().split()[0]
    info["duration"] = f"{time.time() - started:.0f} s"
    cmd = "python benchmarks/tiers.py " + " ".join(sys.argv[1:])
    print()
    print(f"command: `{cmd}`  machine: {json.dumps(info)}")
    print()
    print("| case | what | plain | torchckpt | ratio | target | met | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in bench.ROWS:
        print(
            f"| {r['case']} | {r['what']} | {r['plain']} | {r['ours']} | {r['ratio']} | {r['target']} | {r['met']} "
            f"| {r['note']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "machine": info, "rows": bench.ROWS}, f, indent=1)


if __name__ == "__main__":
    main()
