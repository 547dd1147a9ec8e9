"""torchckpt performance benchmarks (issue 5): one command for every case.

    python benchmarks/run.py --size 1GiB            # the reference run
    python benchmarks/run.py --size 64MiB           # a quick run
    python benchmarks/run.py --size 64MiB --only P1,P2 --reps 3

Each case runs the plain alternative and torchckpt in the same process run,
alternating which goes first, and reports medians (min-max in brackets) and
the ratio torchckpt / plain (lower is better for times; for S3 throughputs the
ratio is plain time / torchckpt time, i.e. higher is better).

The state: ``--size`` bytes of float32 in total, ~100 parameters of a live
``nn.Module`` (a third) plus an Adam optimizer's ``exp_avg`` / ``exp_avg_sq``
(two thirds). Local cases run on ``--dir`` (default: a temp folder on the disk
of /tmp). S3 cases run against a moto server in a child process on loopback, so
its memory and CPU are not the benchmark's. Peak extra RSS is exact: the
kernel's high-water mark (``VmHWM``) reset through ``/proc/self/clear_refs``
before the operation, minus the RSS before it (a sampler thread is the
fallback where clear_refs is not writable).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import torchckpt  # noqa: E402
from torchckpt import CheckpointManager, RetentionPolicy  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
ROWS: list[dict[str, Any]] = []


# ----- helpers ----------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[unit])


def human(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def fmt(values: list[float], unit: str = "s") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3f} {unit}"
    return f"{med:.3f} {unit} [{min(values):.3f}-{max(values):.3f}]"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_rss(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak RSS above the starting RSS while ``fn`` runs (VmHWM after a reset; else a 1 ms sampler)."""
    gc.collect()
    before = rss()
    if _reset_hwm():
        out = fn()
        return max(0, _hwm() - before), out
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return max(0, peak[0] - before), out


def alternate(
    plain: Callable[[], float | None],
    ours: Callable[[], float | None],
    reps: int,
    between: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Run both ``reps`` times, alternating which goes first; each returns its own time or None (timed here)."""
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for rep in range(reps):
        order = [("plain", plain), ("ours", ours)] if rep % 2 == 0 else [("ours", ours), ("plain", plain)]
        for name, fn in order:
            if between:
                between()
            gc.collect()
            t0 = time.perf_counter()
            got = fn()
            times[name].append(got if isinstance(got, float) else time.perf_counter() - t0)
    return times["plain"], times["ours"]


def row(case: str, what: str, plain: str, ours: str, ratio: str, target: str, met: bool | None, note: str = "") -> None:
    r = dict(
        case=case,
        what=what,
        plain=plain,
        ours=ours,
        ratio=ratio,
        target=target,
        met="yes" if met else ("no" if met is not None else "-"),
        note=note,
    )
    ROWS.append(r)
    print(
        f"  {case:4} {what:44} plain {plain:30} torchckpt {ours:30} ratio {ratio:8} target {target:12} met {r['met']} {note}",
        flush=True,
    )


# ----- the state ----------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(n)) for n in sizes)


def make_state(total: int, n: int = 100) -> tuple[Net, torch.optim.Adam]:
    """~``total`` bytes: n float32 parameters (1/3) + Adam exp_avg and exp_avg_sq (2/3)."""
    per = max(1, total // 3 // n // 4)
    sizes = [per + (i % 7) * 16 for i in range(n)]  # a little shape variety
    model = Net(sizes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        opt.state[p] = {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
    return model, opt


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    for s in opt.state.values():
        n += sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))
    return n


def all_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = [p.detach() for p in model.parameters()]
    for s in opt.state.values():
        out += [t for t in s.values() if isinstance(t, torch.Tensor)]
    return out


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_save(model: torch.nn.Module, opt: torch.optim.Optimizer, path: str) -> None:
    with open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())


def clear_versions(mgr: CheckpointManager) -> None:
    for v in mgr.list():
        mgr.delete(v)


# ----- local cases --------------------------------------------------------------------------------------
def local_cases(args: argparse.Namespace, model: Net, opt: torch.optim.Adam, size: int, only: set[str]) -> None:
    work = tempfile.mkdtemp(prefix="torchckpt-bench-", dir=args.dir)
    plain_path = os.path.join(work, "plain.pt")
    mgr = CheckpointManager(os.path.join(work, "ckpt"))
    step = [0]

    def ours_save() -> None:
        step[0] += 1
        mgr.save(step[0], model=model, optimizer=opt)

    def tidy() -> None:  # outside the timing: the previous rep's files
        clear_versions(mgr)
        if os.path.exists(plain_path):
            os.unlink(plain_path)

    sync_median = None
    try:
        if only & {"P1", "P4"}:
            print("P1 sync save (local disk, fsync, checksums)", flush=True)
            tp, to = alternate(lambda: plain_save(model, opt, plain_path), ours_save, args.reps, tidy)
            sync_median = statistics.median(to)
            ratio = statistics.median(to) / statistics.median(tp)
            row(
                "P1",
                "sync save incl. checksum + fsync",
                fmt(tp),
                fmt(to),
                f"{ratio:.2f}x",
                "<= 0.80x",
                ratio <= 0.8,
                f"{size / statistics.median(to) / MiB:.0f} MiB/s",
            )
        if "P3" in only:
            print("P3 peak extra RSS of a sync save (local)", flush=True)
            tidy()
            plain_peak = [run_p3_child(args, "local-plain", args.size) for _ in range(2)]
            ours_peak = [run_p3_child(args, "local-ours", args.size) for _ in range(2)]
            bound = 64 * MiB + 0.05 * size
            row(
                "P3",
                "peak extra RSS, sync save, local (fresh process)",
                human(max(plain_peak)),
                human(max(ours_peak)),
                f"{max(ours_peak) / size * 100:.1f}%",
                f"<= {human(bound)}",
                max(ours_peak) <= bound,
                "max of 2 child processes",
            )
        if "P4" in only:
            print("P4 async save: time the caller is blocked", flush=True)
            tensors = all_tensors(model, opt)
            staging = [torch.empty_like(t) for t in tensors]
            amgr = CheckpointManager(os.path.join(work, "async"), retention=RetentionPolicy(keep_last=1))
            astep = [0]
            background: list[float] = []

            def copy_only() -> None:  # the fastest plain copy here: one memcpy per tensor
                for b, t in zip(staging, tensors):
                    ctypes.memmove(b.data_ptr(), t.data_ptr(), t.numel() * t.element_size())

            def torch_copy() -> None:
                for b, t in zip(staging, tensors):
                    b.copy_(t)

            def ours_async() -> float:
                astep[0] += 1
                t0 = time.perf_counter()
                fut = amgr.save(astep[0], blocking=False, model=model, optimizer=opt)
                blocked = time.perf_counter() - t0
                fut.result()
                background.append(time.perf_counter() - t0)
                return blocked

            amgr.save(0, blocking=False, model=model, optimizer=opt).result()  # first save allocates the buffers
            tp, to = alternate(copy_only, ours_async, args.reps)
            tc, _ = alternate(torch_copy, lambda: None, args.reps)
            amgr.close()
            ratio = statistics.median(to) / statistics.median(tp)
            row(
                "P4",
                "async save: caller blocked vs memcpy",
                fmt(tp),
                fmt(to),
                f"{ratio:.2f}x",
                "<= 1.50x",
                ratio <= 1.5,
                f"background (blocked+write) {statistics.median(background):.2f}s; "
                f"torch copy_ into preallocated {fmt(tc)}",
            )
            if sync_median:
                r2 = statistics.median(to) / sync_median
                row(
                    "P4",
                    "async save: caller blocked vs sync save",
                    f"{sync_median:.3f} s (sync)",
                    fmt(to),
                    f"{r2 * 100:.0f}%",
                    "<= 20%",
                    r2 <= 0.2,
                )
            del staging
            shutil.rmtree(os.path.join(work, "async"), ignore_errors=True)
        if "P2" in only:
            print("P2 restore into live model + optimizer (local, verified)", flush=True)
            tidy()
            plain_save(model, opt, plain_path)
            ours_save()

            def plain_restore() -> None:
                sd = torch.load(plain_path, weights_only=True)
                model.load_state_dict(sd["model"])
                opt.load_state_dict(sd["optimizer"])

            def ours_restore() -> None:
                mgr.restore(model=model, optimizer=opt)

            tp, to = alternate(plain_restore, ours_restore, args.reps)
            ratio = statistics.median(to) / statistics.median(tp)
            row(
                "P2",
                "restore incl. checksum (warm page cache)",
                fmt(tp),
                fmt(to),
                f"{ratio:.2f}x",
                "<= 0.50x",
                ratio <= 0.5,
            )
    finally:
        mgr.close()
        shutil.rmtree(work, ignore_errors=True)


# ----- S3 on moto ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    log = open(os.path.join(tempfile.gettempdir(), f"moto-bench-{port}.log"), "w")
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not os.environ.get("TORCHCKPT_BENCH_KEEP_LOGS"):
            os.unlink(log.name)


class CallCounter:
    """Counts S3 requests by API name (every s3fs call goes through ``_call_s3``)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.calls: dict[str, int] = {}
        self._real = fs._call_s3

    async def _counting(self, method: str, *a: Any, **k: Any) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        return await self._real(method, *a, **k)

    def __enter__(self) -> "CallCounter":
        from fsspec.asyn import sync

        self.fs._call_s3 = self._counting
        # ``fs.call_s3`` (the sync wrapper) is bound to the class's coroutine: route it here too
        self.fs.call_s3 = lambda *a, **k: sync(self.fs.loop, self._counting, *a, **k)
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.fs._call_s3
        del self.fs.call_s3

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def s3_cases(args: argparse.Namespace, size: int, only: set[str]) -> None:
    import boto3
    import s3fs

    from torchckpt.hashing import checksum_bytes
    from torchckpt.storage import s3_transfer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        opts = {"client_kwargs": {"endpoint_url": endpoint}}
        fs = s3fs.S3FileSystem(**opts)
        if only & {"P5", "P3"}:
            s3_size = min(size, args.s3_size)
            model, opt = make_state(s3_size)
            real = state_bytes(model, opt)
            mgr = CheckpointManager("s3://bench/run", storage_options=opts)
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
            data = buf.getvalue()
            del buf
            step = [0]
            print(f"P5 S3 save throughput on moto ({human(real)} state, object {human(len(data))})", flush=True)

            def pipe() -> None:
                fs.pipe_file("bench/plain/state.pt", data)

            def ours_save() -> None:
                step[0] += 1
                mgr.save(step[0], model=model, optimizer=opt)

            def tidy() -> None:
                clear_versions(mgr)
                if fs.exists("bench/plain/state.pt"):
                    fs.rm_file("bench/plain/state.pt")

            tp, to = alternate(pipe, ours_save, args.s3_reps, tidy)
            ratio = statistics.median(tp) / statistics.median(to)
            row(
                "P5",
                "S3 save throughput vs fs.pipe (moto)",
                f"{fmt(tp)} = {len(data) / statistics.median(tp) / MiB:.0f} MiB/s",
                f"{fmt(to)} = {len(data) / statistics.median(to) / MiB:.0f} MiB/s",
                f"{ratio:.2f}x",
                ">= 1.00x",
                ratio >= 1.0,
                f"parts {s3_transfer.PART_SIZE // MiB} MiB x {s3_transfer.CONCURRENCY} in flight",
            )
            tidy()
            peak = max(run_p3_child(args, "s3-ours", s3_size, endpoint) for _ in range(2))
            pipe_peak = run_p3_child(args, "s3-pipe", s3_size, endpoint)
            ours_save()  # the version the restore cases read
            bound = 64 * MiB + 0.05 * real
            row(
                "P3",
                "peak extra RSS, sync save, S3 (fresh process)",
                f"{human(pipe_peak)} + the bytes",
                human(peak),
                f"{peak / real * 100:.1f}%",
                f"<= {human(bound)}",
                peak <= bound,
                "plain = fs.pipe of bytes already in memory",
            )
            # restore: a single cat vs ours
            info = mgr.latest()
            assert info is not None
            big = max(info.files, key=lambda name: info.files[name]["size"])  # state.pt, or the largest object file
            key = mgr.storage.path(f"versions/{info.version}/{big}")
            fs.pipe_file("bench/plain/state.pt", data)
            nbytes = info.files[big]["size"]
            print(f"P5 S3 restore throughput on moto ({human(nbytes)})", flush=True)

            def cat() -> None:
                fs.cat_file(key)

            def fetch1() -> None:
                b = s3_transfer.fetch(fs, key, nbytes, concurrency=1)
                checksum_bytes(b)

            def fetch4() -> None:
                b = s3_transfer.fetch(fs, key, nbytes, concurrency=4)
                checksum_bytes(b)

            def plain_restore() -> None:
                sd = torch.load(io.BytesIO(fs.cat_file("bench/plain/state.pt")), weights_only=True)
                model.load_state_dict(sd["model"])
                opt.load_state_dict(sd["optimizer"])

            def ours_restore() -> None:
                mgr.restore(model=model, optimizer=opt)

            reps = args.s3_reps
            tp, to = alternate(cat, fetch1, reps)
            ratio = statistics.median(tp) / statistics.median(to)
            row(
                "P5",
                "S3 fetch+verify (1 GET) vs fs.cat (moto)",
                f"{fmt(tp)} = {nbytes / statistics.median(tp) / MiB:.0f} MiB/s",
                f"{fmt(to)} = {nbytes / statistics.median(to) / MiB:.0f} MiB/s",
                f"{ratio:.2f}x",
                ">= 1.00x",
                ratio >= 1.0,
                "fs.cat = s3fs: HEAD + 50 MiB ranged GETs, 10 at once",
            )
            tp2, to2 = alternate(cat, fetch4, reps)
            ratio = statistics.median(tp2) / statistics.median(to2)
            row(
                "P5",
                "S3 fetch+verify (4 ranged GETs) vs fs.cat",
                fmt(tp2),
                fmt(to2),
                f"{ratio:.2f}x",
                "(info)",
                None,
                "moto reads the whole object per ranged GET",
            )
            tp3, to3 = alternate(plain_restore, ours_restore, reps)
            ratio = statistics.median(tp3) / statistics.median(to3)
            row(
                "P5",
                "S3 full restore vs cat+torch.load+load_state_dict",
                fmt(tp3),
                fmt(to3),
                f"{ratio:.2f}x",
                ">= 1.00x",
                ratio >= 1.0,
            )
            tidy()
            mgr.close()
            del model, opt, data
            gc.collect()
        if "P6" in only:
            p6(args, fs, opts)


def p6(args: argparse.Namespace, fs: Any, opts: dict[str, Any]) -> None:
    from datetime import datetime, timedelta, timezone

    from torchckpt import manifest as mf
    from torchckpt.layout import new_version_id

    n, k = args.versions, args.prune
    print(f"P6 {n} versions in a manifest on moto; prune {k}", flush=True)
    mgr = CheckpointManager("s3://bench/many", storage_options=opts)
    template = mgr.save(0, model=torch.nn.Linear(2, 2), metrics={"loss": 1.0})
    base = datetime.now(timezone.utc) - timedelta(days=30)
    infos = []
    for i in range(n):
        created = base + timedelta(seconds=i)
        vid = new_version_id(i, created)
        infos.append(
            dataclasses.replace(
                template,
                version=vid,
                step=i,
                created_at=created,
                url=mgr.storage.url(mf.version_dir(vid)),
                metrics={"loss": 1.0 / (i + 1)},
            )
        )
    mgr.storage.write_bytes(mf.MANIFEST, mf.encode(mf.Manifest(1, infos)))
    manifest_bytes = mgr.storage.size(mf.MANIFEST)
    # data for the k oldest versions (what pruning deletes), written in bulk
    blobs: dict[str, bytes] = {}
    for info in infos[:k]:
        d = mgr.storage.path(mf.version_dir(info.version))
        blobs[f"{d}/meta.json"] = b"{}"
        for name in info.files:
            blobs[f"{d}/{name}"] = b"x"
    fs.pipe(blobs)
    fresh = CheckpointManager("s3://bench/many", storage_options=opts)
    fs2 = fresh.storage.fs
    times_list, times_latest = [], []
    with CallCounter(fs2) as c_list:
        for _ in range(args.reps):
            t0 = time.perf_counter()
            got = fresh.list()
            times_list.append(time.perf_counter() - t0)
    per_list = c_list.total / args.reps
    with CallCounter(fs2) as c_latest:
        for _ in range(args.reps):
            t0 = time.perf_counter()
            latest = fresh.latest()
            times_latest.append(time.perf_counter() - t0)
    assert len(got) == n and latest is not None and latest.step == n - 1
    row(
        "P6",
        f"list() of {n} versions ({human(manifest_bytes)} manifest)",
        "-",
        fmt(times_list),
        "-",
        "1 read",
        per_list == 1,
        f"{per_list:.0f} request(s): {sorted(c_list.calls)}",
    )
    row(
        "P6",
        f"latest() of {n} versions",
        "-",
        fmt(times_latest),
        "-",
        "1 read",
        c_latest.total / args.reps == 1,
        f"{c_latest.total / args.reps:.0f} request(s)",
    )
    with CallCounter(fs2) as c_prune:
        t0 = time.perf_counter()
        removed = fresh.prune(RetentionPolicy(keep_last=n - k))
        dt = time.perf_counter() - t0
    assert len(removed) == k, len(removed)
    fs.invalidate_cache()
    gone = {i.version for i in removed}
    left = [p for p in fs.find(fresh.storage.path(mf.VERSIONS)) if p.split("/")[-2] in gone]
    row(
        "P6",
        f"prune {k} of {n} versions",
        "-",
        f"{dt:.3f} s",
        "-",
        "batched",
        c_prune.calls.get("delete_objects", 0) <= 2 * -(-k // 1000)
        and c_prune.total <= 2 * -(-k // 1000) + 8
        and not left,
        f"{c_prune.total} requests: " + ", ".join(f"{m} x{c}" for m, c in sorted(c_prune.calls.items())),
    )
    fresh.close()
    mgr.close()


# ----- import time --------------------------------------------------------------------------------------
def import_time(args: argparse.Namespace) -> None:
    print("import torchckpt beyond import torch", flush=True)
    code = (
        "import time,sys; t0=time.perf_counter(); import torch; t1=time.perf_counter(); had=set(sys.modules); "
        "import torchckpt; t2=time.perf_counter(); heavy=[m for m in ('s3fs','boto3','botocore','aiobotocore',"
        "'aiohttp','safetensors','filelock','numpy','fsspec') if m in sys.modules and m not in had]; "
        "print(t1-t0, t2-t1, ','.join(heavy) or '-')"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    torch_t, ours_t, heavy = [], [], ""
    for _ in range(max(5, args.reps)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
        a, b, heavy = (out.split() + [""])[:3]
        torch_t.append(float(a))
        ours_t.append(float(b))
    row(
        "imp",
        "import torchckpt after import torch",
        f"{fmt(torch_t)} (torch)",
        fmt(ours_t),
        f"+{statistics.median(ours_t) / statistics.median(torch_t) * 100:.0f}%",
        "(report)",
        None,
        f"loaded by torchckpt (of s3fs, boto*, aiohttp, safetensors, filelock, numpy, fsspec): {heavy}",
    )


# ----- P3 in a fresh child process ----------------------------------------------------------------------
def p3_child(args: argparse.Namespace) -> None:
    """One save in a fresh process: peak RSS above the RSS just before it (first-time allocations included)."""
    kind = args.p3_child
    model, opt = make_state(args.size)
    work = tempfile.mkdtemp(prefix="torchckpt-p3-", dir=args.dir)
    try:
        if kind == "local-plain":
            fn: Callable[[], Any] = lambda: plain_save(model, opt, os.path.join(work, "plain.pt"))
        elif kind == "local-ours":
            mgr = CheckpointManager(os.path.join(work, "ckpt"))
            fn = lambda: mgr.save(1, model=model, optimizer=opt)
        else:
            import s3fs

            opts = {"client_kwargs": {"endpoint_url": args.endpoint}}
            if kind == "s3-ours":
                mgr = CheckpointManager(f"s3://bench/p3-{os.getpid()}", storage_options=opts)
                fn = lambda: mgr.save(1, model=model, optimizer=opt)
            else:  # s3-pipe: the serialised bytes already in memory (not counted), then fs.pipe
                fs = s3fs.S3FileSystem(**opts)
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
                data = buf.getvalue()
                del buf
                fn = lambda: fs.pipe_file(f"bench/p3-{os.getpid()}.pt", data)
        # one tiny save first: imports, the S3 client and its service model are loaded once per process,
        # not per save, and are not what the bound is about
        tiny = CheckpointManager(os.path.join(work, "warm")) if kind.startswith("local") else None
        if kind == "s3-pipe":
            fs.pipe_file(f"bench/p3-{os.getpid()}-warm", b"x" * 1000)
        elif kind == "s3-ours":
            CheckpointManager(f"s3://bench/p3w-{os.getpid()}", storage_options=opts).save(0, t=torch.ones(4))
        elif tiny is not None:
            tiny.save(0, t=torch.ones(4))
        extra, _ = peak_extra_rss(fn)
        print(json.dumps({"extra": extra, "state": state_bytes(model, opt)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_p3_child(args: argparse.Namespace, kind: str, size: int, endpoint: str = "") -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--p3-child", kind, "--size", str(size), "--endpoint", endpoint]
    if args.dir:
        cmd += ["--dir", args.dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["extra"])


# ----- main ---------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    disk = subprocess.run(["df", "-h", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "disk": " ".join(disk.split()[:2]) + f" ({disk.split()[-1]})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchckpt": torchckpt.__version__,
        "loadavg": open("/proc/loadavg").read().split()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="total state size (1GiB, 64MiB)")
    ap.add_argument("--s3-size", type=parse_size, default=parse_size("1GiB"), help="cap for S3 objects (<= 1GiB)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each local case (alternating)")
    ap.add_argument("--s3-reps", type=int, default=3)
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--prune", type=int, default=1_000)
    ap.add_argument("--dir", default=None, help="local folder to write to (default: the temp dir)")
    ap.add_argument("--only", default="P1,P2,P3,P4,P5,P6,import", help="comma-separated cases")
    ap.add_argument("--p3-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    only = {c.strip() for c in args.only.split(",")}
    if args.p3_child:
        p3_child(args)
        return
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    info["torch_threads"] = str(torch.get_num_threads())
    print("machine:", json.dumps(info), flush=True)
    started = time.time()
    if only & {"P1", "P2", "P3", "P4"}:
        model, opt = make_state(args.size)
        size = state_bytes(model, opt)
        print(f"state: {human(size)} in {len(list(model.parameters()))} parameters + Adam state", flush=True)
        local_cases(args, model, opt, size, only)
        del model, opt
        gc.collect()
    if only & {"P3", "P5", "P6"}:
        s3_cases(args, args.size, only)
    if "import" in only:
        import_time(args)
    info["loadavg_end"] = open("/proc/loadavg").read().split()[0]
    info["duration"] = f"{time.time() - started:.0f} s"
    cmd = "python benchmarks/run.py " + " ".join(sys.argv[1:])
    print()
    print(f"command: `{cmd}`  machine: {json.dumps(info)}")
    print()
    print("| case | what | plain | torchckpt | ratio | target | met | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        print(
            f"| {r['case']} | {r['what']} | {r['plain']} | {r['ours']} | {r['ratio']} | {r['target']} | {r['met']} | {r['note']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "machine": info, "rows": ROWS}, f, indent=1)


if __name__ == "__main__":
    main()
