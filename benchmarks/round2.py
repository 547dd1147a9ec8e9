"""Issue 13 targets (R1, R2, R3, R5), same-run ratios: alternating order, medians [min-max].

    python benchmarks/round2.py --size 512MiB --reps 4
    python benchmarks/round2.py --size 256MiB --only R3 --reps 3

R1  verified restore (torch format, local) vs torch.load(mmap=True) + load_state_dict   target <= 1.25x
    (a module-only state of --size bytes); P2's plain torch.load + load_state_dict is shown too (<= 0.5x)
R2  safetensors restore (verified) vs safetensors.torch.load_file + load_state_dict       target <= 1.25x
    safetensors save vs safetensors.torch.save_file + fsync                               target <= 1.10x
R3  restore(model=net) of a model + Adam version vs restore of a model-only version       target <= 1.20x
    (local disk; the S3 byte count is tests/test_partial_reads.py and the S3 row below)
R5  sync save (model + Adam) vs a raw write + fsync of the same bytes                     target <= 1.15x
    and vs torch.save + fsync                                                             target <= 0.90x
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (  # noqa: E402
    ROWS,
    CallCounter,
    alternate,
    clear_versions,
    fmt,
    human,
    machine,
    make_state,
    moto_server,
    parse_size,
    plain_save,
    row,
    state_bytes,
)

from torchckpt import CheckpointManager  # noqa: E402


def module_state(total: int, n: int = 100) -> torch.nn.Module:
    per = max(1, total // n // 4)
    return torch.nn.ParameterList(torch.nn.Parameter(torch.randn(per + (i % 7) * 16)) for i in range(n))


def ratio_row(case: str, what: str, tp: list[float], to: list[float], limit: float, note: str = "") -> None:
    r = statistics.median(to) / statistics.median(tp)
    row(case, what, fmt(tp), fmt(to), f"{r:.2f}x", f"<= {limit:.2f}x", r <= limit, note)


def fsync_file(path: str, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)


def r1_r2(args: argparse.Namespace, work: str) -> None:
    import safetensors.torch as st

    net = module_state(args.size)
    sd = net.state_dict()
    plain = os.path.join(work, "plain.pt")
    torch.save(sd, plain)
    stf = os.path.join(work, "plain.safetensors")
    st.save_file(sd, stf)
    mgr = CheckpointManager(os.path.join(work, "t"))
    mgr.save(1, model=net)
    mst = CheckpointManager(os.path.join(work, "s"), format="safetensors")
    mst.save(1, model=net)
    print(f"R1/R2 module state {human(args.size)}", flush=True)
    if "R1" in args.only:
        tp, to = alternate(
            lambda: net.load_state_dict(torch.load(plain, mmap=True, weights_only=True)),
            lambda: mgr.restore(model=net),
            args.reps,
        )
        ratio_row("R1", "verified restore vs torch.load(mmap)+lsd", tp, to, 1.25)
        tp, to = alternate(
            lambda: net.load_state_dict(torch.load(plain, weights_only=True)), lambda: mgr.restore(model=net), args.reps
        )
        ratio_row("P2", "verified restore vs torch.load+lsd", tp, to, 0.5)
    if "R2" in args.only:
        tp, to = alternate(lambda: net.load_state_dict(st.load_file(stf)), lambda: mst.restore(model=net), args.reps)
        ratio_row("R2", "safetensors restore vs load_file+lsd", tp, to, 1.25)

        fresh = os.path.join(work, "fresh.safetensors")

        def st_save() -> None:  # a new file each time, like a new version
            st.save_file(sd, fresh)
            fd = os.open(fresh, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        step = [1]

        def ours_save() -> None:
            step[0] += 1
            mst.save(step[0], model=net)

        def tidy() -> None:
            clear_versions(mst)
            if os.path.exists(fresh):
                os.unlink(fresh)

        tp, to = alternate(st_save, ours_save, args.reps, tidy)
        ratio_row("R2", "safetensors save vs save_file+fsync", tp, to, 1.10, "ours incl. checksum + commit")
    mgr.close()
    mst.close()


def r3_r5(args: argparse.Namespace, work: str) -> None:
    model, opt = make_state(args.size)
    total = state_bytes(model, opt)
    print(f"R3/R5 model + Adam {human(total)}", flush=True)
    both = CheckpointManager(os.path.join(work, "both"))
    info = both.save(1, model=model, optimizer=opt)
    alone = CheckpointManager(os.path.join(work, "alone"))
    alone.save(1, model=model)
    if "R3" in args.only:
        tp, to = alternate(lambda: alone.restore(model=model), lambda: both.restore(model=model), args.reps)
        ratio_row(
            "R3",
            "restore(model=) of model+Adam vs model-only",
            tp,
            to,
            1.20,
            "files " + ", ".join(f"{k} {human(v['size'])}" for k, v in info.files.items()),
        )
    if "R5" in args.only:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
        data = buf.getbuffer()
        raw = os.path.join(work, "raw.bin")
        torch_path = os.path.join(work, "torch.pt")
        step = [1]

        def ours() -> None:
            step[0] += 1
            both.save(step[0], model=model, optimizer=opt)

        def tidy() -> None:
            clear_versions(both)
            for p in (raw, torch_path):
                if os.path.exists(p):
                    os.unlink(p)

        tp, to = alternate(lambda: fsync_file(raw, data), ours, args.reps, tidy)
        ratio_row("R5", "sync save vs raw write+fsync of the bytes", tp, to, 1.15, f"{human(len(data))}")
        tp, to = alternate(lambda: plain_save(model, opt, torch_path), ours, args.reps, tidy)
        ratio_row("R5", "sync save vs torch.save+fsync", tp, to, 0.90)
        del data
        buf.close()
    both.close()
    alone.close()


def r3_s3(args: argparse.Namespace) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto accepts any
        os.environ.setdefault(key, "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    model, opt = make_state(min(args.size, args.s3_size))
    with moto_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        opts = {"client_kwargs": {"endpoint_url": endpoint}}
        mgr = CheckpointManager("s3://bench/r3", storage_options=opts)
        info = mgr.save(1, model=model, optimizer=opt)
        fs = mgr.storage.fs
        fetched: list[int] = []
        original = fs._call_s3

        async def counting(method: str, *a: Any, **kw: Any) -> Any:
            out = await original(method, *a, **kw)
            if method == "get_object" and not str(kw.get("Key", "")).endswith("manifest.json"):
                fetched.append(int(out.get("ContentLength", 0)))
            return out

        fs._call_s3 = counting
        with CallCounter(fs):
            mgr.restore(model=model)
        fs._call_s3 = original
        model_bytes = info.files["model.state.pt"]["size"]
        r = sum(fetched) / model_bytes
        row(
            "R3",
            "S3 restore(model=): bytes fetched vs model's",
            human(model_bytes),
            human(sum(fetched)),
            f"{r:.3f}x",
            "<= 1.10x",
            r <= 1.1,
            f"{len(fetched)} GETs; version {human(info.size_bytes)}",
        )
        mgr.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("512MiB"))
    ap.add_argument("--s3-size", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--only", default="R1,R2,R3,R5,R3S3")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1: no OpenMP stalls)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.only = {c.strip() for c in args.only.split(",")}
    torch.manual_seed(0)
    info = machine()
    print("machine:", info, flush=True)
    work = tempfile.mkdtemp(prefix="torchckpt-r2-", dir=args.dir)
    try:
        if args.only & {"R1", "R2"}:
            r1_r2(args, work)
        if args.only & {"R3", "R5"}:
            r3_r5(args, work)
        if "R3S3" in args.only:
            r3_s3(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load_end = f.read().split()[0]
    print(
        f"\ncommand: `python benchmarks/round2.py {' '.join(sys.argv[1:])}`  loadavg {info['loadavg']} -> {load_end}\n"
    )
    print("| case | what | plain | torchckpt | ratio | target | met | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        print(
            f"| {r['case']} | {r['what']} | {r['plain']} | {r['ours']} | {r['ratio']} | {r['target']} | {r['met']} "
            f"| {r['note']} |"
        )


if __name__ == "__main__":
    main()
